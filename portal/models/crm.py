from datetime import datetime

from sqlalchemy import ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal.extensions import db
from portal.timeutil import utcnow


class Customer(db.Model):
    __tablename__ = "customers"
    id: Mapped[int] = mapped_column(primary_key=True)
    external_id: Mapped[str] = mapped_column(String(200), unique=True)
    name: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    primary_emails = relationship(
        "CustomerPrimaryEmail", back_populates="customer", cascade="all, delete-orphan",
        order_by="CustomerPrimaryEmail.id",
    )
    contact_emails = relationship(
        "CustomerContactEmail", back_populates="customer", cascade="all, delete-orphan",
        order_by="CustomerContactEmail.id",
    )

    @property
    def current_primary(self) -> "CustomerPrimaryEmail | None":
        return next((e for e in self.primary_emails if e.until is None), None)

    @property
    def primary_email(self) -> str | None:
        current = self.current_primary
        return current.address if current else None


class CustomerPrimaryEmail(db.Model):
    """One entry of a customer's primary address history.

    `since` is None for the customer's first address (it matches email of any date);
    `until` is None while the address is the current primary one.
    """
    __tablename__ = "customer_primary_emails"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"), index=True)
    address: Mapped[str] = mapped_column(String(320), index=True)  # lower-cased
    since: Mapped[datetime | None]
    until: Mapped[datetime | None]

    customer = relationship("Customer", back_populates="primary_emails")


class CustomerContactEmail(db.Model):
    """Additional contact addresses: shown, never matched (seed FAQ)."""
    __tablename__ = "customer_contact_emails"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"), index=True)
    address: Mapped[str] = mapped_column(String(320))

    customer = relationship("Customer", back_populates="contact_emails")


class Deal(db.Model):
    __tablename__ = "deals"
    id: Mapped[int] = mapped_column(primary_key=True)
    external_id: Mapped[str] = mapped_column(String(200), unique=True)
    name: Mapped[str] = mapped_column(String(300))
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    owner = relationship("User")
    members = relationship("DealCustomer", back_populates="deal", cascade="all, delete-orphan")


class DealCustomer(db.Model):
    __tablename__ = "deal_customers"
    __table_args__ = (UniqueConstraint("deal_id", "customer_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    deal_id: Mapped[int] = mapped_column(ForeignKey("deals.id", ondelete="CASCADE"), index=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(16))  # primary | additional

    deal = relationship("Deal", back_populates="members")
    customer = relationship("Customer")
