"""`python -m amqscale.workers SPEC`: a worker process, as the supervisor starts it."""

from .worker import main

main()
