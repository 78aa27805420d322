#!/usr/bin/env python3
"""Set up and look at the sqlite databases of db_send.py and db_recv.py.

    python examples/db_ctrl.py init DB       # (re)create the records table, empty
    python examples/db_ctrl.py insert DB     # one record per line of stdin
    python examples/db_ctrl.py list DB       # print every record
"""

import sqlite3
import sys


def main(argv):
    if len(argv) < 3:
        print(f"Usage: {argv[0]} [init|insert|list] db")
        return 1
    command, path = argv[1], argv[2]
    conn = sqlite3.connect(path)
    try:
        if command == "init":
            conn.execute("DROP TABLE IF EXISTS records")
            conn.execute("CREATE TABLE records("
                         "id INTEGER PRIMARY KEY AUTOINCREMENT, description TEXT)")
        elif command == "insert":
            conn.executemany("INSERT INTO records(description) VALUES (?)",
                             ((line.rstrip("\n"),) for line in sys.stdin))
        elif command == "list":
            for row in conn.execute("SELECT * FROM records ORDER BY id"):
                print(row)
        else:
            print(f"Unrecognised command: {command}")
            return 1
        conn.commit()
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
