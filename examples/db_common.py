"""The sqlite side of db_send.py and db_recv.py: a Db runs every query on a thread of
its own (sqlite calls block, and the container's loop must not), and tells the container
a piece of work is done by triggering an application event through an EventInjector.

The table is `records(id INTEGER PRIMARY KEY AUTOINCREMENT, description TEXT)`; db_ctrl.py
makes it.
"""

import queue
import sqlite3
import threading


class Db:
    def __init__(self, path, injector):
        self.path = path
        self.injector = injector
        self.tasks = queue.Queue()
        self.position = None  # the id of the last record loaded
        self.pending = []     # events to trigger once the current work is committed
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    # Called from the container's thread: each queues work for the database thread.

    def close(self):
        self.tasks.put(self._close)

    def reset(self):
        self.tasks.put(self._reset)

    def load(self, records, event=None):
        """Fill the queue.Queue `records` with the next rows (as dicts), then trigger."""
        self.tasks.put(lambda conn: self._load(conn, records, event))

    def get_id(self, event):
        """Set `event.id` to the highest id in the table (0 if empty), then trigger."""
        self.tasks.put(lambda conn: self._get_id(conn, event))

    def insert(self, id, data, event=None):
        """Insert a row; trigger `event` once it is committed."""
        self.tasks.put(lambda conn: self._insert(conn, id, data, event))

    def delete(self, id, event=None):
        """Delete a row; trigger `event` once that is committed."""
        self.tasks.put(lambda conn: self._delete(conn, id, event))

    # The database thread.

    def _close(self, conn):
        self.running = False

    def _reset(self, conn):
        self.position = None

    def _get_id(self, conn, event):
        row = conn.execute("SELECT max(id) AS id FROM records").fetchone()
        event.id = row["id"] or 0
        self.injector.trigger(event)

    def _load(self, conn, records, event):
        if self.position is None:
            cursor = conn.execute("SELECT * FROM records ORDER BY id")
        else:
            cursor = conn.execute("SELECT * FROM records WHERE id > ? ORDER BY id",
                                  (self.position,))
        while not records.full():
            row = cursor.fetchone()
            if row is None:
                break
            self.position = row["id"]
            records.put(dict(row))
        if event is not None:
            self.injector.trigger(event)

    def _insert(self, conn, id, data, event):
        if id:
            conn.execute("INSERT INTO records(id, description) VALUES (?, ?)", (id, data))
        else:
            conn.execute("INSERT INTO records(description) VALUES (?)", (data,))
        if event is not None:
            self.pending.append(event)

    def _delete(self, conn, id, event):
        conn.execute("DELETE FROM records WHERE id = ?", (id,))
        if event is not None:
            self.pending.append(event)

    def _run(self):
        conn = sqlite3.connect(self.path)
        conn.row_factory = sqlite3.Row
        try:
            while self.running:
                task = self.tasks.get()
                while True:  # everything queued by now goes in one commit
                    task(conn)
                    try:
                        task = self.tasks.get_nowait()
                    except queue.Empty:
                        break
                conn.commit()
                for event in self.pending:
                    self.injector.trigger(event)
                self.pending = []
        finally:
            conn.close()
            self.injector.close()  # lets the container's run() end
