import pytest

from tests.conftest import run


@pytest.mark.parametrize(
    ("runtime", "code"),
    [("python", "print(1)"), ("node", "console.log(1)"), ("bash", "echo 1")],
)
def test_execute_prints_one_in_each_runtime(api, runtime, code):
    response = run(api, {"runtime": runtime, "code": code})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["stdout"] == "1"
    assert body["exitCode"] == 0
    assert body["status"] == "ok"
