"""The operator CLI: flask --app portal eis ..."""
from portal.extensions import db
from portal.models import ApiToken, User


def test_user_create_and_token_create(app, monkeypatch):
    runner = app.test_cli_runner()
    monkeypatch.setenv("NEW_PW", "s3cret-password")
    r = runner.invoke(args=["eis", "user", "create", "Ops@Example.test", "--role", "it", "--password-env", "NEW_PW"])
    assert r.exit_code == 0, r.output
    user = db.session.query(User).one()
    assert (user.email, user.role) == ("ops@example.test", "it") and user.check_password("s3cret-password")
    r = runner.invoke(args=["eis", "token", "create", "--user", "ops@example.test"])
    assert r.exit_code == 0 and r.output.startswith("eis_")
    token = r.output.splitlines()[0]  # stdout; the line about it goes to stderr
    client = app.test_client()
    assert client.get("/api/v1/customers/x", headers={"Authorization": f"Bearer {token}"}).status_code == 404
    assert db.session.query(ApiToken).count() == 1


def test_user_create_refuses_bad_input(app, monkeypatch):
    runner = app.test_cli_runner()
    monkeypatch.setenv("PW", "long-enough-pw")
    monkeypatch.setenv("SHORT", "x")
    assert "is empty or not set" in runner.invoke(args=["eis", "user", "create", "a@example.test", "--role", "rep", "--password-env", "UNSET_VAR"]).output
    assert "at least 8" in runner.invoke(args=["eis", "user", "create", "a@example.test", "--role", "rep", "--password-env", "SHORT"]).output
    assert "Invalid value for '--role'" in runner.invoke(args=["eis", "user", "create", "a@example.test", "--role", "boss", "--password-env", "PW"]).output
    assert "not a valid email" in runner.invoke(args=["eis", "user", "create", "nope", "--role", "rep", "--password-env", "PW"]).output
    runner.invoke(args=["eis", "user", "create", "a@example.test", "--role", "rep", "--password-env", "PW"])
    assert "exists already" in runner.invoke(args=["eis", "user", "create", "a@example.test", "--role", "rep", "--password-env", "PW"]).output
    assert "no user" in runner.invoke(args=["eis", "token", "create", "--user", "ghost@example.test"]).output
    assert db.session.query(User).count() == 1


def test_every_command_has_help(app):
    runner = app.test_cli_runner()
    for args in (["eis"], ["eis", "init-db"], ["eis", "user", "create"], ["eis", "token", "create"]):
        r = runner.invoke(args=[*args, "--help"])
        assert r.exit_code == 0 and "Usage:" in r.output, args


def test_start_up_refuses_default_secret_key(tmp_path, monkeypatch):
    import pytest

    from portal import ConfigError, create_app

    monkeypatch.delenv("SECRET_KEY", raising=False)
    monkeypatch.delenv("FLASK_DEBUG", raising=False)
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/x.db"})
    monkeypatch.setenv("SECRET_KEY", "a-real-secret-value-0123456789")
    assert create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/x.db"}).config["SECRET_KEY"].startswith("a-real")
