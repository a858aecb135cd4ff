"""The web process: Label Studio's ML backend protocol (Flask under gunicorn) and /predict."""
