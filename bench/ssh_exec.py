"""Round trip of `true` through an SSH-executor agent, beside a local agent and plain ssh.

One stack with two agents on loopback: ``local`` runs `true` itself, ``via-ssh`` runs it on
this machine through the throwaway sshd (agent.exec_via, one ControlMaster). Both are timed on
bench/dispatch.py's resident-SUB path (Exec through the master, wait for CmdDone), N=200 each
after 20 warm-ups, interleaved sample by sample. ssh rows: `ssh localhost true` with a fresh
connection per command, and through a ControlMaster connection.
"""

from __future__ import annotations

from bench import common as B
from bench.dispatch import ExecDone, bench_ssh
from common.rpc import MasterClient

N = 200
N_WARMUP = 20
N_SSH_FRESH = 30
N_SSH_MUX = 100


def main() -> None:
    args = B.parser(__doc__).parse_args()
    print(B.machine())
    with B.ssh_baseline(args) as ssh, B.workdir(args, "ssh-exec") as tmp:
        if ssh is None:
            return  # the reason was printed: without sshd there is no SSH executor to measure
        roots = {"workspace_roots": [str(tmp)]}
        agents = [
            B.AgentSpec("local", ["true"], roots),
            B.AgentSpec("via-ssh", ["true"], {**roots, "exec_via": ssh.url(), "ssh_options": ssh.options()}),
        ]
        with B.BusStack(tmp, agents) as stack, MasterClient([stack.endpoint("master_clients")], stack.security()) as mc:
            paths = [ExecDone(mc, stack.endpoint("broker_xpub"), agent=a.id) for a in agents]
            try:
                for _ in range(N_WARMUP):
                    for p in paths:
                        p()
                samples: list[list[float]] = [[], []]
                for _ in range(N):
                    for i, p in enumerate(paths):
                        samples[i] += B.timed(p, 1)
            finally:
                for p in paths:
                    p.close()
        rows = [
            ("p4bus, local agent (exec + CmdDone)", B.latency(samples[0])),
            ("p4bus, SSH-executor agent (exec + CmdDone)", B.latency(samples[1])),
            ("ssh localhost true, fresh connection", B.latency(bench_ssh(ssh.fresh(), N_SSH_FRESH))),
            ("ssh localhost true, ControlMaster", B.latency(bench_ssh(ssh.multiplexed(), N_SSH_MUX))),
        ]
    print(
        B.table(
            ["path", "N", "p50 ms", "p99 ms", "mean ms"],
            [(name, s.n, s.p50_ms, s.p99_ms, s.mean_ms) for name, s in rows],
        )
    )
    via, fresh = rows[1][1], rows[2][1]
    print(
        f"SSH-executor agent p50 = {via.p50_ms / fresh.p50_ms:.2f}x a fresh ssh; "
        f"{via.p50_ms - rows[0][1].p50_ms:+.1f} ms against the local agent"
    )


if __name__ == "__main__":
    main()
