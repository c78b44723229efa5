"""The demo: a real-estate sales team's mailboxes on a local Dovecot, linked and synced.

Run through scripts/demo.sh. It starts Dovecot on free loopback ports, fills two reps'
mailboxes with a month of mail (customer mail, internal mail, a draft, Czech names and
subjects), creates demo users, customers and deals, links the mailboxes through the
product's own code, then runs the web portal and a worker (which syncs them) until
Ctrl-C. Every minute or so a customer writes again, so new mail keeps arriving.
"""
from __future__ import annotations

import argparse
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

from cryptography.fernet import Fernet

from devservers import Dovecot, SmtpSink, make_message

ROOT = Path(__file__).resolve().parent.parent

DOMAIN = "reality-demo.test"
PASSWORD = "demo-password"
REPS = [("petra.svobodova", "Petra Svobodová"), ("tomas.kral", "Tomáš Král")]
CUSTOMERS = [  # external id, name, primary address, additional contact
    ("C-1001", "Jiří Novák", "jiri.novak@klient.test", "jiri.novak.home@klient.test"),
    ("C-1002", "Jana Nováková", "jana.novakova@klient.test", None),
    ("C-1003", "Karel Dvořák", "karel.dvorak@klient.test", None),
    ("C-1004", "Eliška Černá", "eliska.cerna@klient.test", None),
    ("C-1005", "Martin Procházka", "martin.prochazka@klient.test", None),
]
DEALS = [("D-501", "Byt 3+kk, Praha 6 – Dejvice", "C-1001", ["C-1002"]),
         ("D-502", "Rodinný dům, Říčany", "C-1003", []),
         ("D-503", "Pronájem 2+1, Brno", "C-1004", [])]


def rep_address(local: str) -> str:
    return f"{local}@{DOMAIN}"


def sample_mail(petra: str, tomas: str) -> list[tuple[str, str, dict, list[str], int]]:
    """(mailbox, folder, message fields, flags, days ago) for the first month."""
    jiri, jana, karel, eliska, martin = (c[2] for c in CUSTOMERS)
    m = dict
    return [
        (petra, "INBOX", m(from_=f"Jiří Novák <{jiri}>", to=petra, subject="Dotaz na byt 3+kk v Dejvicích",
                           body="Dobrý den, je byt ještě volný? Rádi bychom se přišli podívat."), [], 12),
        (petra, "Sent", m(from_=f"Petra Svobodová <{petra}>", to=jiri, subject="Re: Dotaz na byt 3+kk v Dejvicích",
                          body="Dobrý den, byt je volný. Hodí se vám prohlídka ve čtvrtek v 17:00?"), ["\\Seen"], 11),
        (petra, "INBOX", m(from_=jiri, to=petra, cc=f"Jana Nováková <{jana}>", subject="Prohlídka ve čtvrtek",
                           body="Čtvrtek nám vyhovuje, přijdeme s manželkou."), [], 10),
        (petra, "INBOX", m(from_=f"Jiří Novák <{jiri.replace('novak@', 'novak.home@')}>", to=petra,
                           subject="Z domácí adresy (additional contact, not logged)", body="Posílám z domova."), [], 9),
        (petra, "INBOX", m(from_=f"Tomáš Král <{tomas}>", to=petra, cc=karel,
                           subject="Interní: předávám klienta Dvořáka", body="Internal: ignored."), [], 8),
        (petra, "Drafts", m(from_=petra, to=eliska, subject="Koncept nabídky (draft, ignored)",
                            body="Rozepsáno..."), ["\\Draft"], 2),
        (petra, "INBOX", m(from_="newsletter@portal-reality.test", to=petra, subject="Týdenní přehled trhu",
                           body="Not a customer: ignored."), [], 3),
        (petra, "INBOX", m(from_=f"Eliška Černá <{eliska}>", to=petra, subject="Pronájem v Brně – podmínky",
                           body="Jaká je výše kauce?"), [], 40),  # outside the month: not logged
        (tomas, "INBOX", m(from_=f"Karel Dvořák <{karel}>", to=tomas, subject="Rodinný dům v Říčanech – hypotéka",
                           body="Banka potřebuje odhad ceny."), [], 6),
        (tomas, "Sent", m(from_=f"Tomáš Král <{tomas}>", to=karel, subject="Re: Rodinný dům v Říčanech – hypotéka",
                          body="Odhad zajistím do pátku."), ["\\Seen"], 5),
        (tomas, "INBOX", m(from_=f"Martin Procházka <{martin}>", to=tomas, subject="Kupní smlouva – připomínky",
                           body="V příloze posílám připomínky.",
                           attachments=[("pripominky.txt", "text/plain", "Článek 4: termín předání.".encode())]),
         [], 1),
    ]


LATER = [  # customers writing while the demo runs
    ("C-1001", "Jiří Novák", "Ještě jeden dotaz k parkování"),
    ("C-1003", "Karel Dvořák", "Odhad od banky dorazil"),
    ("C-1005", "Martin Procházka", "Podpis smlouvy v pondělí?"),
    ("C-1004", "Eliška Černá", "Chtěla bych si domluvit prohlídku"),
]


def ensure_instance_config(instance: Path) -> None:
    """A per-deployment secret and encryption key in instance/config.py, made once and kept
    out of git, readable by this user only (0600), as the database is (see below)."""
    config = instance / "config.py"
    if not config.exists():
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"SECRET_KEY = {secrets.token_hex(32)!r}\nEIS_ENCRYPTION_KEYS = {Fernet.generate_key().decode()!r}\n")
        print(f"==> wrote {config} (SECRET_KEY, EIS_ENCRYPTION_KEYS)", flush=True)
    for secret in (config, *instance.glob("eis.sqlite3*")):  # earlier demos made them readable by all
        secret.chmod(0o600)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("EIS_DEMO_PORT", "5000")))
    parser.add_argument("--drip-seconds", type=int, default=60, help="how often a customer writes again")
    args = parser.parse_args()

    instance = Path(os.environ.get("EIS_INSTANCE_PATH", ROOT / "instance"))
    instance.mkdir(parents=True, exist_ok=True)
    ensure_instance_config(instance)
    # The demo's mail servers run on loopback, which the product refuses unless allowed.
    allow = ",".join(filter(None, (os.environ.get("EIS_MAIL_HOSTS_ALLOW"), "127.0.0.1")))
    env = dict(os.environ, EIS_INSTANCE_PATH=str(instance), FLASK_APP="portal", EIS_MAIL_HOSTS_ALLOW=allow,
               EIS_SYNC_INTERVAL_MIN_MINUTES="1", EIS_SYNC_INTERVAL_MAX_MINUTES="2")
    os.environ.update(env)

    dovecot = Dovecot(instance / "demo-dovecot")
    dovecot.start()
    petra, tomas = (rep_address(local) for local, _ in REPS)
    # Where the reps' email from the CRM goes: a local SMTP server that accepts their
    # logins and keeps what it gets (the copy lands in Sent over IMAP, as on any server).
    smtp = SmtpSink(users={petra: PASSWORD, tomas: PASSWORD})
    smtp.start()
    fresh = not (instance / "demo-seeded").exists()
    if fresh:
        for address in (petra, tomas):
            dovecot.add_user(address, PASSWORD)
        now = datetime.now().astimezone()
        for mailbox, folder, message, flags, days in sample_mail(petra, tomas):
            when = now - timedelta(days=days, hours=random.random())
            dovecot.append(mailbox, folder, make_message(**message, date=when), flags=flags, when=when)
    else:
        for address in (petra, tomas):
            dovecot.add_user(address, PASSWORD)

    from portal import create_app

    app = create_app()
    with app.app_context():
        from flask_migrate import upgrade

        upgrade()
        ensure_instance_config(instance)  # the database upgrade() may just have made: 0600 too
        if fresh:
            seed(app, dovecot, smtp)
            (instance / "demo-seeded").write_text("seeded\n")
        else:
            relink(app, dovecot, smtp)
        from portal.queue import get_redis

        get_redis(app).ping()  # starts the embedded Redis (when REDIS_URL is unset) for the children

    procs = [
        subprocess.Popen([sys.executable, str(ROOT / "worker.py")], cwd=ROOT, env=env),
        subprocess.Popen([sys.executable, "-m", "flask", "--app", "portal", "run", "--host", "127.0.0.1",
                          "--port", str(args.port), "--no-reload"], cwd=ROOT, env=env),
    ]
    print_welcome(args.port)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        n = 0
        while not stop["now"] and all(p.poll() is None for p in procs):
            time.sleep(1)
            n += 1
            if n % args.drip_seconds == 0:
                ext, name, subject = LATER[(n // args.drip_seconds - 1) % len(LATER)]
                address = next(c[2] for c in CUSTOMERS if c[0] == ext)
                dovecot.append(petra if ext in ("C-1001", "C-1004") else tomas, "INBOX",
                               make_message(from_=f"{name} <{address}>", to=petra if ext in ("C-1001", "C-1004") else tomas,
                                            subject=f"{subject} ({time.strftime('%H:%M')})", body="Děkuji, " + name))
                print(f"demo: {name} wrote again: {subject!r} (synced within 1-2 minutes, or press Sync now)")
    except KeyboardInterrupt:
        pass
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        dovecot.stop()
        smtp.stop()
    return 0


def seed(app, dovecot, smtp) -> None:
    from portal import crm
    from portal.extensions import db
    from portal.models import ApiToken, User

    users = {}
    for email, role, name in [(f"admin@{DOMAIN}", "admin", "Alena Administrátorová"),
                              (f"support@{DOMAIN}", "support", "Simona Podpora"),
                              (f"it@{DOMAIN}", "it", "Ivan Technik")] + \
                             [(f"{local}@crm.{DOMAIN}", "rep", name) for local, name in REPS]:
        user = User(email=email, role=role, name=name)
        user.set_password(PASSWORD)
        db.session.add(user)
        users[email] = user
    for ext, name, address, extra in CUSTOMERS:
        crm.upsert_customer(ext, name=name, primary_email=address, additional_emails=[extra] if extra else [])
    db.session.flush()
    for ext, name, primary, additional in DEALS:
        crm.upsert_deal(ext, name=name, owner_email=None,
                        members=[(primary, "primary")] + [(a, "additional") for a in additional])
    row, token = ApiToken.issue(users[f"admin@{DOMAIN}"], days=app.config["EIS_API_TOKEN_DAYS"])
    db.session.add(row)
    db.session.commit()
    (app.instance_path and Path(app.instance_path, "demo-token")).write_text(token + "\n")
    relink(app, dovecot, smtp)


def relink(app, dovecot, smtp) -> None:
    """Link (or, after a restart on new ports, re-point) the reps' mailboxes."""
    from portal.accounts import linking as service
    from portal.extensions import db
    from portal.models import Mailbox, User
    from portal.queue import enqueue_sync

    for local, _name in REPS:
        address = rep_address(local)
        user = db.session.query(User).filter_by(email=f"{local}@crm.{DOMAIN}").one()
        mailbox = db.session.query(Mailbox).filter_by(address=address).filter(Mailbox.state != "disconnected").first()
        if mailbox is not None:
            mailbox.imap_port = dovecot.imap_port  # the local servers got new ports this run
            mailbox.smtp_port = smtp.port
            db.session.commit()
            continue
        mailbox, _ = service.link_imap_mailbox(user, service.ImapSettings(
            address=address, login=address, password=PASSWORD, imap_host="127.0.0.1",
            imap_port=dovecot.imap_port, imap_security="none",
            smtp_host="127.0.0.1", smtp_port=smtp.port, smtp_security="none"))
        db.session.commit()
        enqueue_sync(mailbox.id, "backfill", user.id)


def print_welcome(port: int) -> None:
    token_file = Path(os.environ["EIS_INSTANCE_PATH"]) / "demo-token"
    token = token_file.read_text().strip() if token_file.exists() else "<see instance/demo-token>"
    print(f"""
================================================================================
 Email Integration Service demo: http://127.0.0.1:{port}/
 Sign in with any of these (password: {PASSWORD}):
   admin@{DOMAIN}   support@{DOMAIN}   it@{DOMAIN}
   petra.svobodova@crm.{DOMAIN}   tomas.kral@crm.{DOMAIN}   (reps)
 Their mailboxes (on a local Dovecot) are back-filled now; new customer mail keeps
 arriving. Read what was logged on a customer through the API:
   curl -s -H 'Authorization: Bearer {token}' \\
        http://127.0.0.1:{port}/api/v1/customers/C-1001/activities
 Ctrl-C stops the web server, the worker and Dovecot.
================================================================================
""", flush=True)


if __name__ == "__main__":
    sys.exit(main())
