"""The Python client API users import: masters, the orchestrator, and running commands."""

from common.rpc import MasterClient, OrchestratorClient, RequestError, RpcClient
from p4bus.runner import RunResult, exit_code_of, run_command

__all__ = [
    "MasterClient",
    "OrchestratorClient",
    "RequestError",
    "RpcClient",
    "RunResult",
    "exit_code_of",
    "run_command",
]
