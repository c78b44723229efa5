"""RQ job functions by domain (sync.py, send.py, schedule.py). Jobs take ids, run inside an
app context (context.py), and raise on failure; they are enqueued only through portal.queue."""
