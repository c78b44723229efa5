"""The navigation: each role sees the areas it may use, and only those that exist."""
from flask import current_app

# (endpoint, label, roles); admin sees everything.
NAV = (
    ("main.index", "Home", ("rep", "support", "it", "admin")),
    ("mailboxes.mine", "My email accounts", ("rep", "support", "it", "admin")),
    ("customers.index", "Customers", ("rep", "support", "it", "admin")),
    ("support.mailboxes", "Mailboxes", ("support", "admin")),
    ("it.accounts", "Connected accounts", ("it", "admin")),
    ("admin.users", "Admin", ("admin",)),
)


def nav_for(user) -> list[tuple[str, str]]:
    if not user.is_authenticated:
        return []
    items = []
    for endpoint, label, roles in NAV:
        if endpoint not in current_app.view_functions:
            continue
        if user.role != "admin" and user.role not in roles:
            continue
        if endpoint == "customers.index" and not user.can_see_activities:
            continue
        items.append((endpoint, label))
    return items
