"""``notifier web``: the status API and Twilio's status callback (docs/DESIGN.md §9).

``app`` (the FastAPI factory), ``auth`` (the Bearer key), ``limits`` (the
body cap), ``access`` (the access log), ``twilio_callback`` (signature and
answers of ``/twilio/status``), ``server`` (uvicorn, the bind check, the
production parts), ``console`` (the operators' console at ``/console/``,
docs/console.md).
"""
