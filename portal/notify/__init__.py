"""Telling the people who can fix it (issue 14, item 2): the owner of a mailbox that turned
Problematic, once per incident, and IT's daily digest. config.py (the settings), sweep.py
(who is owed an email, from the data), messages.py (what it says), deliver.py (sending)."""
