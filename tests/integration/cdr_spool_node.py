"""A node process for the CDR crash test: the real runtime with the spool on, in front of an
embedded CDR store that is "down" (raises) while the file named by argv[4] exists.

python tests/integration/cdr_spool_node.py <data_dir> <sip_port> <rtp_port> <store_down_flag>
"""

from __future__ import annotations

import sys
from pathlib import Path

from node.embedded.cdr_store import EmbeddedCdrStore
from node.runtime.app import run
from node.runtime.config import NodeConfig
from node.transport.sockets import Listen


def main() -> int:
    data_dir, sip_port, rtp_port, flag = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
    write_many = EmbeddedCdrStore.write_many

    async def flaky_write_many(self, cdrs):
        if flag.exists():
            raise ConnectionError("CDR store down (test flag file present)")
        await write_many(self, cdrs)

    EmbeddedCdrStore.write_many = flaky_write_many  # type: ignore[method-assign]
    cfg = NodeConfig(
        data_dir=Path(data_dir), listens=(Listen("udp", "127.0.0.1", sip_port),), http_port=0,
        rtp_port_min=rtp_port, rtp_port_max=rtp_port + 15, rtp_bind="127.0.0.1",
        nat_ping_interval=0, cdr_spool=True, log_level="INFO",
    )
    return run(cfg)


if __name__ == "__main__":
    sys.exit(main())
