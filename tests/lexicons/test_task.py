"""Tests of the task building blocks (lexicons/task.py)."""
import pytest

import lexicons
from lexicons import task as tasks
from lexicons.errors import LexiconsError, TaskError
from lexicons.task import Task


class First(Task.Startup):
    priority = 1

    def run(self, db, sv):
        pass


class Zeroth(Task.Startup):
    priority = 0

    def run(self, db, sv):
        pass


class AlsoFirst(Task.Startup):
    priority = 1

    def run(self, db, sv):
        pass


class Bye(Task.Shutdown):
    def run(self, db, sv):
        pass


class Every(Task.Interval):
    every = 2.5

    def run(self, db, sv):
        pass


def test_task_is_exported_from_the_package():
    """`from lexicons import Task` gives the Task base with its three kinds."""
    assert lexicons.Task is Task
    assert issubclass(Task.Startup, Task)
    assert issubclass(Task.Shutdown, Task)
    assert issubclass(Task.Interval, Task)
    assert (Task.Startup.kind, Task.Shutdown.kind, Task.Interval.kind) == (
        "startup", "shutdown", "interval")


def test_startup_tasks_are_required_by_default():
    """A startup task stops start-up when it fails unless it says required = False."""
    assert Task.Startup.required is True


def test_build_instantiates_classes_and_keeps_instances():
    """build() makes one instance per class, accepts instances, keeps declaration order."""
    bye = Bye()
    built = tasks.build([First, bye, Every])
    assert [type(t) for t in built] == [First, Bye, Every]
    assert built[1] is bye
    assert built[0].name == "First"


def test_build_refuses_what_is_not_a_task():
    """A block that is not a startup, shutdown or interval task is a TaskError naming it."""
    class Plain:
        pass

    class Bare(Task):
        pass

    for bad, name in ((Plain, "Plain"), (Bare, "Bare"), (print, "print")):
        with pytest.raises(TaskError, match=name):
            tasks.build([bad])


def test_build_reports_a_constructor_that_raises():
    """A task class whose constructor raises is reported by name, as a LexiconsError."""
    class Broken(Task.Interval):
        def __init__(self):
            raise OSError("no config")

    with pytest.raises(LexiconsError, match="Broken.*no config"):
        tasks.build([Broken])


def test_build_refuses_a_priority_that_is_not_a_number():
    """priority must be a number; a string is refused naming the task."""
    class Odd(Task.Shutdown):
        priority = "high"

    with pytest.raises(TaskError, match="Odd.*priority"):
        tasks.build([Odd])


def test_ordered_sorts_by_priority_lower_first_ties_in_declaration_order():
    """ordered() picks one kind and sorts it by priority, stable for ties."""
    built = tasks.build([First, Bye, AlsoFirst, Zeroth, Every])
    assert [t.name for t in tasks.ordered(built, "startup")] == ["Zeroth", "First", "AlsoFirst"]
    assert [t.name for t in tasks.ordered(built, "shutdown")] == ["Bye"]


def test_interval_comes_from_every_or_interval_method_or_plain_number():
    """The interval is `every`, an overridden interval(), or a plain number attribute."""
    class Method(Task.Interval):
        def __init__(self):
            self.n = 0

        def interval(self):
            self.n += 1
            return self.n * 0.5

    class Number(Task.Interval):
        interval = 7

    assert tasks.interval_of(Every()) == 2.5
    method = Method()
    assert [tasks.interval_of(method) for _ in range(3)] == [0.5, 1.0, 1.5]
    assert tasks.interval_of(Number()) == 7.0


@pytest.mark.parametrize("value", [0, -1, float("nan"), float("inf"), "5", True, None, 1e12])
def test_interval_must_be_a_positive_number_of_seconds(value):
    """A bad interval is a TaskError naming the task (none when `every` is unset)."""
    class Bad(Task.Interval):
        every = value

    with pytest.raises(TaskError, match="Bad"):
        tasks.interval_of(Bad())


def test_interval_method_that_raises_is_reported_by_name():
    """An interval() that raises becomes a TaskError naming the task and the cause."""
    class Raising(Task.Interval):
        def interval(self):
            raise KeyError("rate")

    with pytest.raises(TaskError, match="Raising.*KeyError"):
        tasks.interval_of(Raising())


def test_run_must_be_defined():
    """A task without run() says so by name when it is run."""
    class Lazy(Task.Startup):
        pass

    with pytest.raises(NotImplementedError, match="Lazy"):
        Lazy().run(db=None, sv=None)


# --- the original API's names: execute, async execute, set() ----------------------------


def test_perform_calls_execute_with_the_names_it_takes():
    """execute is the task's body when defined; it gets db and sv if it names them."""
    seen = []

    class Named(Task.Startup):
        def execute(self, db):
            seen.append(("execute", db))

    class Everything(Task.Shutdown):
        def execute(self, **kwargs):
            seen.append(("kwargs", kwargs))

    class Old(Task.Startup):
        def run(self, db, sv):
            seen.append(("run", db, sv))

    for task in (Named(), Everything(), Old()):
        tasks.perform(task, "DB", "SV")
    assert seen == [("execute", "DB"), ("kwargs", {"db": "DB", "sv": "SV"}),
                    ("run", "DB", "SV")]


def test_an_async_execute_is_awaited():
    """`async def execute` runs to the end, awaits included, before perform returns."""
    import asyncio

    seen = []

    class Later(Task.Interval):
        every = 1

        async def execute(self, db, sv):
            await asyncio.sleep(0.01)
            seen.append(db)

    tasks.perform(Later(), "DB", None)
    assert seen == ["DB"]


def test_set_gives_the_next_interval():
    """An interval task may say its next interval with set(), the original API's name."""
    class Ticking(Task.Interval):
        def __init__(self):
            self.next = 2.5

        def set(self):
            return self.next

    task = Ticking()
    assert tasks.dynamic(task) and tasks.interval_of(task) == 2.5
    task.next = 0
    with pytest.raises(TaskError, match="Ticking: the interval must be"):
        tasks.interval_of(task)
    assert Every().set() == tasks.interval_of(Every())   # set() of a fixed interval
    assert not tasks.dynamic(Every())


def test_neither_execute_nor_run_is_named_in_the_error():
    """A task without execute or run says which to define."""
    class Lazy(Task.Shutdown):
        pass

    with pytest.raises(NotImplementedError, match="Lazy does not define execute"):
        tasks.perform(Lazy(), None, None)
