"""Customers, their Activities tab (the timeline of logged email) and opening one email."""
