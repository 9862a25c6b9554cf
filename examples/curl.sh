#!/usr/bin/env bash
# lib_mlx's server from curl: health, models, a chat completion (plain and streamed), the
# Responses API, and -- when IMAGE and/or AUDIO name files -- a multipart upload.
#
#   lib-mlx serve --model /path/to/model        # prints the base URL and the API key
#   BASE_URL=http://127.0.0.1:PORT API_KEY=... examples/curl.sh
#   BASE_URL=... API_KEY=... IMAGE=cat.png AUDIO=meow.wav examples/curl.sh   # a model that sees/hears
#
# Multipart convention: one part named "request" carries the JSON body exactly as it would be
# sent alone; every other part is a file, and content parts refer to it by its part name as
# "attachment:<part-name>" (image_url.url, input_audio.data).
set -euo pipefail

: "${BASE_URL:?set BASE_URL to the base URL of the server, e.g. http://127.0.0.1:8080}"
AUTH=()
if [ -n "${API_KEY:-}" ]; then AUTH=(-H "Authorization: Bearer ${API_KEY}"); fi
CURL=(curl -sS --fail-with-body)

echo "== GET /health (public)"
"${CURL[@]}" "$BASE_URL/health"
echo

echo "== GET /v1/models"
MODELS=$("${CURL[@]}" "${AUTH[@]}" "$BASE_URL/v1/models")
echo "$MODELS"
MODEL=${MODEL:-$(printf '%s' "$MODELS" | sed -n 's/.*"id" *: *"\([^"]*\)".*/\1/p')}

echo "== POST /v1/chat/completions (JSON)"
"${CURL[@]}" "${AUTH[@]}" "$BASE_URL/v1/chat/completions" \
  -H "Content-Type: application/json" \
  -d '{"model": "'"$MODEL"'", "temperature": 0,
       "messages": [{"role": "user", "content": "Is the capital of France Paris? Answer Yes or No."}]}'
echo

echo "== POST /v1/chat/completions (streamed: reasoning_content and content deltas, then [DONE])"
"${CURL[@]}" -N "${AUTH[@]}" "$BASE_URL/v1/chat/completions" \
  -H "Content-Type: application/json" \
  -d '{"model": "'"$MODEL"'", "stream": true, "stream_options": {"include_usage": true}, "thinking": true,
       "messages": [{"role": "user", "content": "Describe Paris in 50 words."}]}'

echo "== POST /v1/responses"
"${CURL[@]}" "${AUTH[@]}" "$BASE_URL/v1/responses" \
  -H "Content-Type: application/json" \
  -d '{"model": "'"$MODEL"'", "input": "Is the capital of France Paris?"}'
echo

if [ -n "${IMAGE:-}" ] || [ -n "${AUDIO:-}" ]; then
  echo "== POST /v1/chat/completions (multipart/form-data: a request part plus file parts)"
  PARTS='{"type": "text", "text": "What is in this picture, and what do you hear?"}'
  FILES=()
  if [ -n "${IMAGE:-}" ]; then
    PARTS="$PARTS"', {"type": "image_url", "image_url": {"url": "attachment:photo"}}'
    FILES+=(-F "photo=@${IMAGE}")
  fi
  if [ -n "${AUDIO:-}" ]; then
    PARTS="$PARTS"', {"type": "input_audio", "input_audio": {"data": "attachment:clip"}}'
    FILES+=(-F "clip=@${AUDIO}")
  fi
  REQUEST='{"model": "'"$MODEL"'", "messages": [{"role": "user", "content": ['"$PARTS"']}]}'
  "${CURL[@]}" "${AUTH[@]}" "$BASE_URL/v1/chat/completions" \
    -F "request=${REQUEST};type=application/json" "${FILES[@]}"
  echo
fi
