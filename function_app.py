"""What the Functions host indexes: the app and its Blueprints. Logic lives in bridges/."""
import azure.functions as func

from bridges import runtime
from bridges.triggers import http, queue, timers

runtime.start()  # validates the settings; a bad one is reported by every function, never stops indexing

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
app.register_functions(http.blueprint)
app.register_functions(queue.blueprint)
app.register_functions(timers.blueprint)
