"""The cohort to predict: patients, their slides, and labels where the CSV has them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from hipt.cohort import CohortError, check_ids, group_patients, is_missing, read_csv, rows_of
from hipt.tasks.base import Task


@dataclasses.dataclass
class PredictCohort:
    """A cohort to predict.

    Attributes:
        patients: one row per patient, in CSV order: ``patient_id``, ``slide_ids`` (tuple),
            ``rows`` (CSV rows), ``labelled`` and the task's canonical label columns (NaN for
            patients without labels).
        label_columns: the canonical label columns (empty when the CSV has none).
        source_columns: the CSV columns the labels were read from.
    """

    patients: pd.DataFrame
    label_columns: list[str]
    source_columns: list[str]

    @property
    def labelled(self) -> pd.DataFrame:
        """The patients with labels (the ones evaluated)."""
        return self.patients[self.patients["labelled"]].reset_index(drop=True)


def read_cohort(csv: str | Path, task: Task) -> PredictCohort:
    """Read ``csv`` for prediction with a fitted ``task`` (its classes, bins).

    A row whose label cells are empty is predicted, not evaluated. An invalid label (a class
    the model does not know, a negative time) or a patient whose slides disagree is an error
    listing every such row.

    Raises:
        CohortError: missing id columns or values, duplicate slides, invalid labels.
    """
    df = read_csv(csv)
    problems = check_ids(df)
    if problems:
        raise CohortError(csv, problems)
    order = list(dict.fromkeys(df["patient_id"]))
    slides = df.groupby("patient_id", sort=False)
    patients = pd.DataFrame(
        {
            "patient_id": order,
            "slide_ids": [tuple(slides.get_group(p)["slide_id"]) for p in order],
            "rows": [tuple(rows_of(slides.get_group(p).index)) for p in order],
        }
    )
    source = task.label_source(df)
    if not source:
        return PredictCohort(patients.assign(labelled=False), [], [])
    has = ~df[source].map(is_missing).any(axis=1)
    labels, problems = task.read_labels(df[has])
    labelled = df[has].assign(**{c: labels[c] for c in labels.columns})
    grouped, conflicts = group_patients(labelled, list(labels.columns), df)
    problems += conflicts
    if problems:
        raise CohortError(csv, problems)
    found = grouped.drop(columns=["slide_ids", "rows"])
    merged = patients.merge(found, on="patient_id", how="left")
    merged["labelled"] = merged["patient_id"].isin(set(grouped["patient_id"]))
    return PredictCohort(merged, list(labels.columns), source)
