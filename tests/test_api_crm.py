"""The CRM side of the API: customers, deals, activities, and every bad input a 4xx."""
from datetime import datetime

import pytest

from portal.extensions import db
from portal.models import Customer, CustomerPrimaryEmail, Deal


@pytest.fixture
def admin_api(world):
    return world.api(world.user("admin@example.test", "admin"))


def test_put_customer_creates_then_updates(admin_api):
    r = admin_api.put("/customers/C-1", json={"name": "Jana Nováková", "primary_email": "Jana@Example.TEST",
                                               "additional_emails": ["jana.home@example.test"]})
    assert r.status_code == 201, r.json
    assert r.json["primary_email"] == "jana@example.test"
    assert r.json["additional_emails"] == ["jana.home@example.test"]
    assert r.json["primary_email_history"] == [{"address": "jana@example.test", "since": None, "until": None}]
    r = admin_api.put("/customers/C-1", json={"name": "Jana Nová"})
    assert r.status_code == 200
    assert r.json["name"] == "Jana Nová"
    assert r.json["primary_email"] is None  # omitted means no primary address now
    assert admin_api.get("/customers/C-1").json["name"] == "Jana Nová"


def test_first_primary_address_has_no_lower_bound_even_with_since(admin_api):
    r = admin_api.put("/customers/C-1", json={"name": "A", "primary_email": "a@example.test",
                                               "primary_email_since": "2026-10-01T00:00:00Z"})
    assert r.json["primary_email_history"] == [{"address": "a@example.test", "since": None, "until": None}]


def test_changed_primary_email_closes_old_entry_and_opens_new_one(admin_api):
    admin_api.put("/customers/C-1", json={"name": "A", "primary_email": "old@example.test"})
    r = admin_api.put("/customers/C-1", json={"name": "A", "primary_email": "new@example.test",
                                               "primary_email_since": "2026-11-01T08:00:00+01:00"})
    assert r.status_code == 200
    assert r.json["primary_email_history"] == [
        {"address": "old@example.test", "since": None, "until": "2026-11-01T07:00:00Z"},
        {"address": "new@example.test", "since": "2026-11-01T07:00:00Z", "until": None},
    ]
    # The same address again changes nothing.
    r = admin_api.put("/customers/C-1", json={"name": "A", "primary_email": "NEW@example.test"})
    assert len(r.json["primary_email_history"]) == 2


def test_primary_email_change_defaults_to_now(admin_api):
    admin_api.put("/customers/C-1", json={"name": "A", "primary_email": "old@example.test"})
    before = datetime.utcnow().replace(microsecond=0)
    r = admin_api.put("/customers/C-1", json={"name": "A", "primary_email": "new@example.test"})
    since = datetime.fromisoformat(r.json["primary_email_history"][1]["since"].rstrip("Z"))
    assert before <= since <= datetime.utcnow()
    assert r.json["primary_email_history"][0]["until"] == r.json["primary_email_history"][1]["since"]


def test_primary_email_since_before_current_entry_is_refused(admin_api):
    admin_api.put("/customers/C-1", json={"name": "A", "primary_email": "a@example.test"})
    admin_api.put("/customers/C-1", json={"name": "A", "primary_email": "b@example.test",
                                          "primary_email_since": "2026-11-01T00:00:00Z"})
    r = admin_api.put("/customers/C-1", json={"name": "A", "primary_email": "c@example.test",
                                               "primary_email_since": "2026-10-01T00:00:00Z"})
    assert r.status_code == 422 and r.json["error"] == "invalid_primary_email_since"
    history = db.session.query(CustomerPrimaryEmail).order_by(CustomerPrimaryEmail.id).all()
    assert [(e.address, e.until is None) for e in history] == [("a@example.test", False), ("b@example.test", True)]


@pytest.mark.parametrize("body, status, code", [
    ('{"name": ', 400, "invalid_json"),
    ('[1, 2]', 400, "invalid_json"),
])
def test_invalid_json_is_400(admin_api, body, status, code):
    r = admin_api.put("/customers/C-1", data=body, headers={"Content-Type": "application/json"})
    assert (r.status_code, r.json["error"]) == (status, code)
    assert "message" in r.json


def test_non_json_body_is_415(admin_api):
    r = admin_api.put("/customers/C-1", data="name=x", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415 and r.json["error"] == "unsupported_media_type"


@pytest.mark.parametrize("payload, code", [
    ({"name": "A", "nickname": "x"}, "unknown_field"),
    ({"primary_email": "a@example.test"}, "missing_field"),
    ({"name": ""}, "invalid_field"),
    ({"name": 5}, "invalid_field"),
    ({"name": "A", "primary_email": "not-an-address"}, "invalid_email"),
    ({"name": "A", "primary_email": "a@"}, "invalid_email"),
    ({"name": "A", "additional_emails": "a@example.test"}, "invalid_field"),
    ({"name": "A", "additional_emails": ["ok@example.test", "bad"]}, "invalid_email"),
    ({"name": "A", "primary_email": "a@example.test", "primary_email_since": "yesterday"}, "invalid_field"),
])
def test_bad_customer_input_is_422_and_writes_nothing(admin_api, payload, code):
    r = admin_api.put("/customers/C-1", json=payload)
    assert r.status_code == 422, r.json
    assert r.json["error"] == code
    assert db.session.query(Customer).count() == 0


def test_put_deal_with_primary_and_additional_customers(admin_api, world):
    world.user("owner@example.test", "rep")
    admin_api.put("/customers/C-1", json={"name": "A", "primary_email": "a@example.test"})
    admin_api.put("/customers/C-2", json={"name": "B", "primary_email": "b@example.test"})
    r = admin_api.put("/deals/D-1", json={"name": "Flat 3+kk", "owner_email": "owner@example.test",
                                           "customers": [{"external_id": "C-1", "role": "primary"},
                                                         {"external_id": "C-2", "role": "additional"}]})
    assert r.status_code == 201, r.json
    assert r.json == {"external_id": "D-1", "name": "Flat 3+kk", "owner_email": "owner@example.test",
                      "customers": [{"external_id": "C-1", "role": "primary"},
                                    {"external_id": "C-2", "role": "additional"}]}
    r = admin_api.put("/deals/D-1", json={"name": "Flat", "customers": [{"external_id": "C-2", "role": "primary"}]})
    assert r.status_code == 200 and r.json["customers"] == [{"external_id": "C-2", "role": "primary"}]


@pytest.mark.parametrize("payload, code", [
    ({"name": "D", "customers": [{"external_id": "NOPE", "role": "primary"}]}, "unknown_customer"),
    ({"name": "D", "customers": [{"external_id": "C-1", "role": "boss"}]}, "invalid_field"),
    ({"name": "D", "customers": [{"external_id": "C-1"}]}, "invalid_field"),
    ({"name": "D", "customers": [{"external_id": "C-1", "role": "primary"}, {"external_id": "C-1", "role": "additional"}]}, "invalid_field"),
    ({"name": "D", "customers": [{"external_id": "C-1", "role": "primary"}, {"external_id": "C-2", "role": "primary"}]}, "invalid_field"),
    ({"name": "D", "customers": "C-1"}, "invalid_field"),
    ({"name": "D"}, "missing_field"),
    ({"name": "D", "customers": [], "owner_email": "ghost@example.test"}, "unknown_user"),
    ({"name": "D", "customers": [], "extra": 1}, "unknown_field"),
])
def test_bad_deal_input_is_422_and_writes_nothing(admin_api, payload, code):
    admin_api.put("/customers/C-1", json={"name": "A", "primary_email": "a@example.test"})
    admin_api.put("/customers/C-2", json={"name": "B", "primary_email": "b@example.test"})
    r = admin_api.put("/deals/D-1", json=payload)
    assert r.status_code == 422, r.json
    assert r.json["error"] == code
    assert db.session.query(Deal).count() == 0


def test_unknown_customer_on_deal_leaves_existing_deal_unchanged(admin_api):
    admin_api.put("/customers/C-1", json={"name": "A", "primary_email": "a@example.test"})
    admin_api.put("/deals/D-1", json={"name": "D", "customers": [{"external_id": "C-1", "role": "primary"}]})
    r = admin_api.put("/deals/D-1", json={"name": "Renamed", "customers": [{"external_id": "C-9", "role": "primary"}]})
    assert r.status_code == 422
    deal = db.session.query(Deal).one()
    assert deal.name == "D" and [m.customer.external_id for m in deal.members] == ["C-1"]


def test_activities_of_new_customer_are_empty(admin_api):
    admin_api.put("/customers/C-1", json={"name": "A", "primary_email": "a@example.test"})
    r = admin_api.get("/customers/C-1/activities")
    assert r.status_code == 200
    assert r.json == {"customer": "C-1", "activities": [], "limit": 50, "offset": 0}


def test_activities_errors(admin_api, world):
    assert admin_api.get("/customers/NOPE/activities").json["error"] == "not_found"
    admin_api.put("/customers/C-1", json={"name": "A"})
    assert admin_api.get("/customers/C-1/activities?limit=0").status_code == 400
    assert admin_api.get("/customers/C-1/activities?limit=x").status_code == 400
    hidden = world.api(world.user("blind@example.test", "rep", can_see_activities=False))
    r = hidden.get("/customers/C-1/activities")
    assert r.status_code == 403 and r.json["error"] == "activities_not_permitted"


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer nope", "Basic abc", "bearer eis_wrong"])
def test_missing_or_bad_token_is_401(client, admin_api, header):
    headers = {"Authorization": header} if header else {}
    r = client.get("/api/v1/customers/C-1/activities", headers=headers)
    assert r.status_code == 401 and r.json["error"] == "unauthorized"


def test_disabled_user_token_is_401(world):
    user = world.user("gone@example.test", "admin")
    api = world.api(user)
    user.is_enabled = False
    db.session.commit()
    assert api.get("/customers/x/activities").status_code == 401


def test_unknown_api_route_and_method_are_json(admin_api):
    r = admin_api.get("/nope")
    assert r.status_code == 404 and r.json["error"] == "not_found"
    r = admin_api.client.delete("/api/v1/customers/C-1", headers={"Authorization": f"Bearer {admin_api.token}"})
    assert r.status_code == 405 and r.json["error"] == "method_not_allowed"


def test_tokens_are_stored_hashed(world):
    from portal.models import ApiToken

    token = world.token(world.user())
    row = db.session.query(ApiToken).one()
    assert token not in (row.token_hash, row.prefix) and len(row.token_hash) == 64


def test_openapi_documents_exactly_the_api_routes(app, client):
    doc = client.get("/api/v1/openapi.json").json
    assert doc["openapi"].startswith("3.")
    documented = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
    served = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("api.") and rule.endpoint != "api.openapi":
            path = rule.rule.removeprefix("/api/v1")
            for arg in rule.arguments:
                path = path.replace(f"<path:{arg}>", "{external_id}").replace(f"<int:{arg}>", "{" + arg + "}")
            served |= {(path, m) for m in rule.methods - {"HEAD", "OPTIONS"}}
    assert documented == served
