"""SecantusDB with a wider connection cap, for the load bench.

    python benches/secantusd_wide.py CONNECTIONS [secantusd-py flags...]

SecantusDB refuses connections beyond 1,000 and has no flag to raise that
cap. likewise pins one upstream connection to each client connection (the
upstream's authentication and sessions are per connection) and keeps a few
of its own, so 1,000 clients need a little over 1,000 upstream connections,
as they would against any mongod (whose `net.maxIncomingConnections` is far
higher). This starts the same server through its own command-line entry
point with `max_connections` set, and nothing else changed."""

import sys

from secantus import cli, server

cap = int(sys.argv[1])
plain_init = server.SecantusDBServer.__init__


def wide_init(self, *args, **kwargs):
    kwargs["max_connections"] = cap
    plain_init(self, *args, **kwargs)


server.SecantusDBServer.__init__ = wide_init
sys.exit(cli.main(sys.argv[2:]))
