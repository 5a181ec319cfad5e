"""The Celery app, the planner, thin delivery tasks, the sweeper."""
