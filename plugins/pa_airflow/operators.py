"""Operators over the core package: parameter checks and generator runs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from airflow.exceptions import AirflowFailException
from airflow.models.baseoperator import BaseOperator


class ValidateParamsOperator(BaseOperator):
    """First task of a DAG: check the run's params with `check` (pa_airflow.validation) and
    push the normalised values; bad params fail the run here, without a retry."""

    ui_color = "#fff3c4"

    def __init__(self, *, check: Callable[[dict[str, Any]], dict[str, Any]], **kwargs) -> None:
        super().__init__(**kwargs)
        self.check = check

    def execute(self, context: Any) -> dict[str, Any]:
        from pa_airflow.validation import ParamsError

        try:
            checked = self.check(dict(context["params"]))
        except ParamsError as exc:
            raise AirflowFailException(str(exc)) from None
        self.log.info("params: %s", checked)
        return checked


class GenerateOperator(BaseOperator):
    """Send synthetic labelled traffic (patternalarm.generator); pushes the run's summary.

    `plan` is the checked params (domains, rate_per_min, duration_s, spike), usually the
    validation task's XCom rendered as a native object.
    """

    template_fields: Sequence[str] = ("plan",)
    ui_color = "#d6eaff"

    def __init__(self, *, plan: dict[str, Any] | str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.plan = plan

    def execute(self, context: Any) -> dict[str, Any]:
        from pa_airflow.generate import generate
        from patternalarm import settings
        from patternalarm.generator import RunPlan, Spike

        p = self.plan
        summary = generate(settings.get(), RunPlan(
            domains=tuple(p["domains"]), per_min=p["rate_per_min"], mode=p["mode"],
            duration_s=p["duration_s"], spike=Spike.parse(p["spike"]) if p["spike"] else None))
        self.log.info("generator run %s: %d events sent, %d episodes, %.0f events/s",
                      summary["run_id"], summary["sent"], summary["episodes"],
                      summary["events_per_s"])
        return summary
