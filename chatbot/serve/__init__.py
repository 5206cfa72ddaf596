"""Serve: `chatbot-serve`, an OpenAI-compatible chat server batched across users, and its page.

    server.py      run_server: chatbot-serve's settings, the background model load, uvicorn with
                   ReadDeadline, its HTTP protocol that cuts off clients too slow to send a request
    app.py         the FastAPI app: routes, authentication, the Host check, streaming (SSE) and JSON replies
    engine.py      the scheduler: one thread runs a BatchDecoder over every request
    protocol.py    the chat-completions request schema and response shapes
    static/        chat.html, the page served at /, and its icon

Entry point: `create_app(load_bot, ServeSettings)`. The only folder that imports fastapi and
uvicorn, so the `[serve]` extra is a real boundary.
"""
