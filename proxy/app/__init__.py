"""The application: the `cutover` command line, the HTTP service and the demo.

Built on the library (`proxy` and its `stores` and `migrate` packages), which never imports it.
"""
