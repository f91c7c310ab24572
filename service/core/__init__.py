"""What every capability stands on: settings, errors, the database, logs and metrics; imports no other package."""
