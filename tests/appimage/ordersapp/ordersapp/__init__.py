"""ordersapp: a small application whose Alembic history imports it, as real projects' histories do.

Built into the test images of ``dbrev_dev.envtest.images.app_archive`` (``/app`` in the image, next
to ``alembic.ini`` and ``migrations/``). Its env.py hands Alembic the models' metadata, whose naming
convention names every constraint the scripts create; its scripts use its column types and constants.
"""
