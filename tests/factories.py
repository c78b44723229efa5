"""Build users, tokens, customers and deals in a line."""
import re
from datetime import datetime

from portal import crm
from portal.extensions import db
from portal.models import ApiToken, User

PASSWORD = "correct horse battery"


class World:
    def __init__(self, app):
        self.app = app

    def user(self, email: str = "rep@example.test", role: str = "rep", **fields) -> User:
        user = User(email=email, role=role, **fields)
        user.set_password(PASSWORD)
        db.session.add(user)
        db.session.commit()
        return user

    def token(self, user: User) -> str:
        row, token = ApiToken.issue(user, days=30)
        db.session.add(row)
        db.session.commit()
        return token

    def api(self, user: User) -> "Api":
        return Api(self.app.test_client(), self.token(user))

    def customer(self, external_id: str, email: str | None, *, name: str | None = None,
                 additional: list[str] | None = None, since: datetime | None = None):
        customer, _ = crm.upsert_customer(external_id, name=name or external_id, primary_email=email,
                                          primary_email_since=since, additional_emails=additional)
        db.session.commit()
        return customer

    def deal(self, external_id: str, primary: str, *additional: str):
        members = [(primary, "primary")] + [(a, "additional") for a in additional]
        deal, _ = crm.upsert_deal(external_id, name=external_id, owner_email=None, members=members)
        db.session.commit()
        return deal

    def login(self, user: User, client=None):
        """A test client signed in through the real login form (CSRF included)."""
        client = client or self.app.test_client()
        page = client.get("/login").get_data(as_text=True)
        token = csrf_from(page)
        response = client.post("/login", data={"email": user.email, "password": PASSWORD, "csrf_token": token})
        assert response.status_code == 302, response.get_data(as_text=True)
        return client


def csrf_from(html: str) -> str:
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html) or \
        re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token on the page"
    return match.group(1)


class Api:
    def __init__(self, client, token: str):
        self.client, self.token = client, token

    def _headers(self, extra=None):
        return {"Authorization": f"Bearer {self.token}", **(extra or {})}

    def get(self, path, **kw):
        return self.client.get("/api/v1" + path, headers=self._headers(kw.pop("headers", None)), **kw)

    def put(self, path, json=None, **kw):
        return self.client.put("/api/v1" + path, json=json, headers=self._headers(kw.pop("headers", None)), **kw)

    def post(self, path, json=None, **kw):
        return self.client.post("/api/v1" + path, json=json, headers=self._headers(kw.pop("headers", None)), **kw)

    def delete(self, path, **kw):
        return self.client.delete("/api/v1" + path, headers=self._headers(kw.pop("headers", None)), **kw)
