"""Step 1 of the loop: chat-format data, its validation, and rendering to token ids + loss masks."""
