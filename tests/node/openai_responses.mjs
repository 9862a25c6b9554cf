// openai-node: responses.stream(...).finalResponse() on a reasoning model, with and without a
// reasoning summary, then a second turn by previous_response_id.
import OpenAI from 'openai';
import { env, main } from './common.mjs';

main(async () => {
  const client = new OpenAI({ baseURL: `${env.chatURL}/v1`, apiKey: env.apiKey, maxRetries: 0 });
  const textDeltas = [];
  const plain = client.responses.stream({ model: env.chatModel, input: 'Hi' });
  plain.on('response.output_text.delta', (event) => textDeltas.push(event.delta));
  const first = await plain.finalResponse();
  const summarized = await client.responses
    .stream({ model: env.chatModel, input: 'Hi', reasoning: { summary: 'auto' } })
    .finalResponse();
  const second = await client.responses
    .stream({ model: env.chatModel, input: 'Again', previous_response_id: first.id })
    .finalResponse();
  const reasoningOf = (response) => response.output.find((item) => item.type === 'reasoning');
  return {
    output_text: first.output_text,
    text_deltas: textDeltas,
    reasoning: reasoningOf(first).content.map((part) => part.text).join(''),
    summary: reasoningOf(first).summary,
    summarized: reasoningOf(summarized).summary,
    second_text: second.output_text,
    second_previous: second.previous_response_id === first.id,
    input_tokens: [first.usage.input_tokens, second.usage.input_tokens],
    reasoning_tokens: first.usage.output_tokens_details.reasoning_tokens,
  };
});
