"""`bilevel.errors` exports every exception and warning it defines."""

import inspect

import bilevel.errors as errors


def test_all_lists_every_error_class():
    defined = {
        name
        for name, obj in vars(errors).items()
        if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == errors.__name__
    }
    assert defined == set(errors.__all__)
