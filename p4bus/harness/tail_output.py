"""`p4bus tail` output taken apart, for the tests and benches that compare it with the spools."""

from __future__ import annotations


def sections(text: str) -> list[tuple[str, list[str]]]:
    """(header, body lines) per command's `── header` line, up to the job's closing summary."""
    out: list[tuple[str, list[str]]] = []
    for line in text.splitlines(keepends=True):
        if line.startswith("── INT-"):
            continue  # the job's own state lines (UNKNOWN, RUNNING again) may fall inside a command's output
        if line.startswith("── "):
            out.append((line[3:].rstrip("\n"), []))
        elif out and not line.startswith("INT-"):
            out[-1][1].append(line)
        elif out:
            break  # the timeline printed at the end
    return out


def streams(body: list[str]) -> tuple[str, str]:
    """A section's (stdout, stderr) as the command wrote them (tail marks stderr lines)."""
    out = "".join(line for line in body if not line.startswith("stderr| "))
    err = "".join(line[len("stderr| ") :] for line in body if line.startswith("stderr| "))
    return out, err
