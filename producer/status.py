"""`dicomfleet status`: queued / running / done / failed counts and the reasons, from the ledger."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from shared.ledger import Ledger
from shared.settings import Settings

#: the four headline buckets; `retrying` is running, a dead letter has failed
BUCKET = {"queued": "queued", "running": "running", "retrying": "running", "done": "done",
          "failed": "failed", "dead": "failed"}


@dataclass
class StatusReport:
    counts: Counter = field(default_factory=Counter)
    jobs: dict[str, dict] = field(default_factory=dict)
    queues: dict[str, int] = field(default_factory=dict)
    instances_failed: int = 0
    below_threshold: int = 0  # JPEG outputs below the SSIM threshold, over the done jobs

    @property
    def exit_code(self) -> int:
        """As `convert`'s: 1 when a job or an instance of a done job failed, 3 when all converted
        but some JPEG was flagged."""
        return 1 if self.counts["failed"] or self.instances_failed else 3 if self.below_threshold else 0

    def lines(self, *, detail: bool) -> list[str]:
        c = self.counts
        out = [f"{c['queued']} queued, {c['running']} running, {c['done']} done, {c['failed']} failed"
               f" (waiting in queues: {self.queues.get('high', 0)} high, {self.queues.get('normal', 0)} normal)"]
        for jid, job in sorted(self.jobs.items(), key=lambda kv: kv[1].get("submitted", 0)):
            state = job.get("state", "?")
            if detail or state in ("failed", "dead") or job.get("failed") or job.get("below_ssim_threshold"):
                line = f"{jid}  {state:<8} {job.get('prefix', '')}"
                if state == "done":
                    line += (f"  {job.get('converted', 0)}/{job.get('instances', 0)} converted,"
                             f" {job.get('outputs', 0)} outputs")
                    if job.get("below_ssim_threshold"):
                        line += f", {job['below_ssim_threshold']} JPEG below the SSIM threshold"
                if state == "running" and job.get("worker"):
                    line += f"  on {job['worker']}"
                if job.get("reason"):
                    line += f"  reason: {job['reason']}"
                out.append(line)
                for failure in job.get("failures") or []:
                    out.append(f"    instance {failure}")
        return out


def below_threshold(jobs: dict[str, dict]) -> int:
    """JPEG outputs below the SSIM threshold over the given job records."""
    return sum(int(job.get("below_ssim_threshold", 0) or 0) for job in jobs.values())


def status(job_ids: list[str] | None = None, *, settings: Settings | None = None) -> StatusReport:
    """The ledger's view of the given jobs (or all): two round trips whatever the job count."""
    s = settings or Settings.from_env()
    ledger = Ledger(s)
    report = StatusReport()
    report.jobs = ledger.jobs(job_ids)
    for job in report.jobs.values():
        report.counts[BUCKET.get(job.get("state"), "queued")] += 1
        report.instances_failed += int(job.get("failed", 0) or 0)
    report.below_threshold = below_threshold(report.jobs)
    report.queues = ledger.queue_lengths({"high": s.queue_high, "normal": s.queue})
    return report
