"""One error type for everything the user can fix: the CLI turns it into one line and exit code 2."""

from __future__ import annotations

__all__ = ["TunelabError"]


class TunelabError(Exception):
    """A problem with the user's input (file, config, model name, data row).

    Args:
        what: what is wrong, naming the thing.
        where: file, file:line or config key path, when known.
        fix: how to fix it, when we can say.
    """

    def __init__(self, what: str, where: str | None = None, fix: str | None = None):
        self.what, self.where, self.fix = what, where, fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        parts = [f"{self.where}: {self.what}" if self.where else self.what]
        if self.fix:
            parts.append(f"(fix: {self.fix})")
        return " ".join(parts)
