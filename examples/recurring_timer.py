#!/usr/bin/env python3
"""A timer that fires every second until Ctrl-C: the handler schedules itself again each
time it fires, so the container always has one timer pending and run() goes on. No
connection at all.

    python examples/recurring_timer.py
"""

from amqscale.handlers import MessagingHandler
from amqscale.reactor import Container


class Recurring(MessagingHandler):
    def __init__(self, period):
        super().__init__()
        self.period = period

    def on_start(self, event):
        self.container = event.container
        self.container.schedule(self.period, self)

    def on_timer_task(self, event):
        print("Tick...", flush=True)
        self.container.schedule(self.period, self)


def main():
    container = Container(Recurring(1.0))
    try:
        container.run()
    except KeyboardInterrupt:
        container.stop()
        print()


if __name__ == "__main__":
    main()
