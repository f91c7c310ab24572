"""The money path: reservations, settles, caps and the catalog; bank checks and stateful tests."""
