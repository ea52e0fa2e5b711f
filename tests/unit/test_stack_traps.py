"""The two known traps of the pinned stack stay handled (see constraints.txt)."""

import importlib.metadata

from werkzeug.datastructures import MultiDict


def test_email_validator_2_is_installed_so_fastapi_imports():
    assert importlib.metadata.version("email-validator").startswith("2.")
    import fastapi  # noqa: F401  (fails under pydantic 2 with email-validator 1.x)


def test_wtforms_email_validator_still_works_for_the_airflow_ui():
    from wtforms import Form, StringField
    from wtforms.validators import Email

    class SignIn(Form):
        email = StringField(validators=[Email()])

    assert SignIn(MultiDict({"email": "analyst@example.com"})).validate()
    assert not SignIn(MultiDict({"email": "not-an-address"})).validate()


def test_pandas_stays_below_3_for_pyspark():
    assert int(importlib.metadata.version("pandas").split(".")[0]) < 3
