"""Wait until a freshly started Ray head accepts jobs; the last head start command of the configs.

`ray start --head` returns before the dashboard agent that runs submitted jobs is up, so a
`ray job submit` right after `ray up` can fail with "No available agent to submit job, please
try again later". With this as the last head start command, `ray up` returns only once the job
server answers (with the token, when RAY_AUTH_MODE=token) and the head's agent is serving.
Exits 1 with one line if that takes longer than --timeout seconds.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.request


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dashboard-port", type=int, default=8265, help="the job server's port")
    parser.add_argument("--agent-port", type=int, default=52365,
                        help="the head's --dashboard-agent-listen-port")
    parser.add_argument("--timeout", type=float, default=180, help="seconds (default 180)")
    args = parser.parse_args(argv)

    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + args.timeout
    while True:
        try:
            # The agent registers with the head right after its HTTP server (this health
            # endpoint, no token needed) is up; the job server waits for it up to 10 s.
            agent = f"http://127.0.0.1:{args.agent_port}/api/local_raylet_healthz"
            urllib.request.urlopen(agent, timeout=5).close()
            JobSubmissionClient(f"http://127.0.0.1:{args.dashboard_port}").list_jobs()
            return 0
        except Exception as e:  # not up yet: connection refused, 5xx, or the client's own error
            last = f"{type(e).__name__}: {e}".splitlines()[0]
        if time.monotonic() > deadline:
            print(f"wait_for_jobs: the Ray head on 127.0.0.1 does not accept jobs after "
                  f"{args.timeout:.0f} s ({last})", file=sys.stderr)
            return 1
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
