"""`python -m services.worker [--concurrency N ...]`: one worker process (WORKER_* settings)."""

from services.worker.cli import worker_app

if __name__ == "__main__":
    worker_app()
