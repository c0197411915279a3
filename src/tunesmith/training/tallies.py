"""What the training loop adds up as it goes: a log window's losses, metrics and throughput, and one
step's loss, terms, tokens and metrics over its updates (and over the ranks under torchrun)."""

from .objective import WeightedMeans


class Window:
    """Sums over the steps since the last log line."""

    def __init__(self):
        self.losses, self.metrics, self.tokens, self.seconds = [], WeightedMeans(), 0, 0.0

    def add(self, loss: float, metrics: WeightedMeans, tokens: int, seconds: float) -> None:
        self.losses.append(loss)
        self.metrics.merge(metrics)
        self.tokens, self.seconds = self.tokens + tokens, self.seconds + seconds

    def record(self) -> dict:
        return {
            "loss": sum(self.losses) / len(self.losses),
            **self.metrics.means(),
            "tokens_per_s": self.tokens / max(self.seconds, 1e-9),
        }


class StepTotals:
    """Loss, terms, tokens and task metrics of one loop step, over all its updates."""

    def __init__(self):
        self.loss, self.terms, self.tokens, self.metrics = 0.0, 0, 0, WeightedMeans()

    def add(self, loss: float, n: int, metrics: dict, tokens: int) -> None:
        self.loss, self.terms, self.tokens = (
            self.loss + loss * n,
            self.terms + n,
            self.tokens + tokens,
        )
        self.metrics.add(metrics, n)

    @classmethod
    def summed(cls, parts: list["StepTotals"]) -> "StepTotals":
        """The totals of every rank's share of a step."""
        total = cls()
        for part in parts:
            total.loss, total.terms, total.tokens = (
                total.loss + part.loss,
                total.terms + part.terms,
                total.tokens + part.tokens,
            )
            total.metrics.merge(part.metrics)
        return total
