"""``python chat.py --web``: a Gradio chat page over the same engine and safety guard.

Each browser tab has its own history (``gr.State``); generation streams token
by token; one generation runs at a time (Gradio's queue), so the engine's
prefix cache is never shared between two requests in flight.
"""

from __future__ import annotations

import threading

from prep.chat import ChatSession
from prep.text import clean_message
from prep.safety import EMERGENCY_NUMBERS

TITLE = "心理咨询助手"


def description(hotlines: tuple[str, ...]) -> str:
    """The line under the title, naming the hotlines the guard names (--hotline)."""
    return f"我会认真倾听你的烦恼。如果你正处在危险中，请立即拨打 {EMERGENCY_NUMBERS}，或联系{'、'.join(hotlines)}。"


def build_app(session: ChatSession):
    import gradio as gr

    lock = threading.Lock()

    def respond(message: str, chat: list[dict], history: list[dict]):
        message = clean_message(message or "").strip()
        if not message:
            yield "", chat, history
            return
        chat = chat + [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
        with lock:
            session.history = list(history)
            for piece in session.stream(message):
                chat[-1] = {"role": "assistant", "content": chat[-1]["content"] + piece}
                yield "", chat, history
            reply = session.last_reply
            history = list(session.history)
        chat[-1] = {"role": "assistant", "content": reply.text}
        yield "", chat, history

    def reset():
        return [], [], ""

    with gr.Blocks(title=TITLE, analytics_enabled=False) as app:
        gr.Markdown(f"## {TITLE}\n{description(session.hotlines)}")
        chatbot = gr.Chatbot(type="messages", label="对话", height=480, elem_id="chatbot")
        history = gr.State([])
        with gr.Row():
            box = gr.Textbox(placeholder="说说你的烦恼……（回车发送）", show_label=False, scale=8, elem_id="message")
            send = gr.Button("发送", variant="primary", scale=1, elem_id="send")
            clear = gr.Button("清空对话", scale=1, elem_id="reset")
        box.submit(respond, [box, chatbot, history], [box, chatbot, history])
        send.click(respond, [box, chatbot, history], [box, chatbot, history])
        clear.click(reset, None, [chatbot, history, box])
    return app.queue(default_concurrency_limit=1)


def serve(session: ChatSession, host: str = "127.0.0.1", port: int = 7860) -> None:
    """Serve the chat page; blocks until interrupted."""
    build_app(session).launch(server_name=host, server_port=port, share=False, inbrowser=False, show_api=False)
