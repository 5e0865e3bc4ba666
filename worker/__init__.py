"""The Celery worker that runs training experiments (see worker/celery_app.py)."""
