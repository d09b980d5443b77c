"""Test session setup: gevent patches sockets before anything else is imported."""
from gevent import monkey

monkey.patch_all()
