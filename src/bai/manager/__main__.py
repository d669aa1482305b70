"""``bai-manager``: serve the manager, initialise or migrate its database.

    bai-manager serve [--config F]                 run the API on settings.host:port (and
                                                   api_socket)
    bai-manager init  [--config F] [--keys-out F]  migrate + bootstrap; prints the keypairs
    bai-manager migrate [--config F]               bring the schema to the newest revision

The plain ``serve`` (what ``backend.ai server start`` runs) is served without loading click;
every other command line goes through ``bai.manager.cli``.
"""

from __future__ import annotations

import sys

from bai.ops.argv import entry_points

run, __getattr__ = entry_points("bai.manager")

if __name__ == "__main__":
    sys.exit(run())
