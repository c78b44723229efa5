"""A sales team's mail on a real Dovecot, linked and synced by the product's own code."""
import uuid
from datetime import datetime, timedelta

from rq import SimpleWorker
from sqlalchemy import select

from devservers import make_message
from portal.accounts import linking as service
from portal.extensions import db
from portal.models import Activity, Customer, Email, EmailSource, Mailbox
from portal.queue import QUEUES, get_queue, get_redis


class MailWorld:
    def __init__(self, app, world, dovecot):
        self.app, self.world, self.dovecot = app, world, dovecot
        self.tag = uuid.uuid4().hex[:8]  # Dovecot lives for the session: fresh users per test

    def address(self, local: str) -> str:
        return f"{local}-{self.tag}@agency.test"

    def imap_user(self, local: str, password: str = "imap-pass-1") -> str:
        address = self.address(local)
        self.dovecot.add_user(address, password)
        return address

    def settings(self, address: str, password: str = "imap-pass-1", security: str = "none") -> service.ImapSettings:
        port = self.dovecot.imaps_port if security == "ssl" else self.dovecot.imap_port
        return service.ImapSettings(address=address, login=address, password=password,
                                    imap_host="127.0.0.1", imap_port=port, imap_security=security)

    def link(self, owner, address: str, password: str = "imap-pass-1", **kw) -> Mailbox:
        mailbox, _ = service.link_imap_mailbox(owner, self.settings(address, password, **kw))
        db.session.commit()
        return mailbox

    def rep_with_mailbox(self, local: str = "rep"):
        address = self.imap_user(local)
        rep = self.world.user(f"{local}-{self.tag}@crm.test", "rep")
        return rep, self.link(rep, address)

    def put(self, address: str, folder: str = "INBOX", *, days_ago: float = 1, flags=(), **message) -> int:
        when = datetime.now().astimezone() - timedelta(days=days_ago)
        message.setdefault("date", when)  # written when it arrived, as mail is
        return self.dovecot.append(address, folder, make_message(**message), flags=flags, when=when)

    def sync(self, mailbox: Mailbox, trigger: str = "manual"):
        """Queue a sync and run it with a real RQ worker (burst), as production does."""
        from portal.queue import enqueue_sync

        enqueue_sync(mailbox.id, trigger)
        self.work()
        db.session.expire_all()
        return mailbox.runs.first()

    def work(self) -> None:
        worker = SimpleWorker([get_queue(q) for q in QUEUES], connection=get_redis())
        worker.work(burst=True)

    # -- reading results ----------------------------------------------------------------
    def activities(self) -> set[tuple[str, str]]:
        """(customer external id, subject) for every logged activity."""
        rows = db.session.execute(select(Customer.external_id, Email.subject)
                                  .join(Activity, Activity.customer_id == Customer.id)
                                  .join(Email, Email.id == Activity.email_id)).all()
        return {(c, s) for c, s in rows}

    def activity_rows(self) -> list[tuple[str, str]]:
        return sorted(db.session.execute(select(Customer.external_id, Email.subject)
                                         .join(Activity, Activity.customer_id == Customer.id)
                                         .join(Email, Email.id == Activity.email_id)).all())

    def email_count(self) -> int:
        return db.session.query(Email).count()

    def source_count(self) -> int:
        return db.session.query(EmailSource).count()
