"""The service lifecycle: states and the transitions between them."""
import pytest

from lexicons.daemon.service import TRANSITIONS, Service, ServiceState
from lexicons.errors import IllegalTransition, ServiceError
from tests.support.daemon import make_settings

S = ServiceState


class _Manager:
    app = None


def make(tmp_path):
    return Service(_Manager(), make_settings(tmp_path))


def test_every_state_has_transitions():
    """The transition table covers every state, and FATAL is left only by start or stop."""
    assert set(TRANSITIONS) == set(ServiceState)
    assert TRANSITIONS[S.FATAL] == {S.STARTING, S.STOPPED}


def test_normal_lifecycle(tmp_path):
    """STOPPED -> STARTING -> RUNNING -> STOPPING -> STOPPED is allowed."""
    service = make(tmp_path)
    for state in (S.STARTING, S.RUNNING, S.STOPPING, S.STOPPED):
        service._set_state(state)
        assert service.state is state


@pytest.mark.parametrize("path", [
    [S.RUNNING],
    [S.STOPPING],
    [S.STARTING, S.RUNNING, S.STARTING],
    [S.STARTING, S.RUNNING, S.STOPPING, S.RUNNING],
    [S.STARTING, S.FATAL, S.RUNNING],
])
def test_illegal_transitions_are_refused(tmp_path, path):
    """A transition the table does not allow raises and leaves the state as it was."""
    service = make(tmp_path)
    *legal, illegal = path
    for state in legal:
        service._set_state(state)
    before = service.state
    with pytest.raises(IllegalTransition) as info:
        service._set_state(illegal)
    assert isinstance(info.value, ServiceError)
    assert before.value in str(info.value) and illegal.value in str(info.value)
    assert service.state is before


def test_name_defaults_to_class_name(tmp_path):
    """A service without a name attribute is known by its class name in lower case."""
    class Thing(Service):
        pass

    class Named(Service):
        name = "other"

    settings = make_settings(tmp_path)
    assert Thing(_Manager(), settings).name == "thing"
    assert Named(_Manager(), settings).name == "other"


def test_run_records_failure(tmp_path):
    """_run() records an exception of main() and an unasked return as the last error."""
    class Boom(Service):
        def main(self):
            raise ValueError("bad")

    class Quits(Service):
        def main(self):
            return None

    settings = make_settings(tmp_path)
    boom = Boom(_Manager(), settings)
    boom._run()
    assert boom.last_error == "ValueError: bad"
    quits = Quits(_Manager(), settings)
    quits._run()
    assert "returned" in quits.last_error
