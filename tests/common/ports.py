"""A free TCP port on 127.0.0.1 for a test's server, taken from below the
kernel's ephemeral range. A port found by binding to port 0 comes from that
range, and once released the kernel may hand it to any process that binds to 0
or connects out (mpirun's out-of-band channel, ZeroMQ, another test) before our
server binds it; ports below the range are never handed out that way."""
import random
import socket

_rng = random.SystemRandom()


def _ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port():
    """A port that was free a moment ago and that the kernel does not assign
    on its own; falls back to a kernel-chosen one when the range leaves none."""
    low = _ephemeral_low()
    if low > 11000:
        for _ in range(200):
            port = _rng.randrange(10000, low)
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
