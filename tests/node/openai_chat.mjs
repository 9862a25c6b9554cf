// openai-node: a streamed chat completion through the stream helper, and runTools.
import OpenAI from 'openai';
import { env, main, weatherParameters } from './common.mjs';

main(async () => {
  const chat = new OpenAI({ baseURL: `${env.chatURL}/v1`, apiKey: env.apiKey, maxRetries: 0 });
  const deltas = [];
  const reasoning = [];
  const stream = chat.chat.completions.stream({
    model: env.chatModel,
    messages: [{ role: 'user', content: 'Hi' }],
    stream_options: { include_usage: true },
  });
  for await (const chunk of stream) {
    const delta = chunk.choices[0]?.delta ?? {};
    if (delta.content) deltas.push(delta.content);
    if (delta.reasoning_content) reasoning.push(delta.reasoning_content);
  }
  const final = await stream.finalChatCompletion();

  const tools = new OpenAI({ baseURL: `${env.toolsURL}/v1`, apiKey: env.apiKey, maxRetries: 0 });
  const called = [];
  const runner = tools.chat.completions.runTools({
    model: env.toolsModel,
    messages: [{ role: 'user', content: 'What is the weather in Paris?' }],
    tools: [
      {
        type: 'function',
        function: {
          name: 'get_weather',
          description: 'Current weather for a city',
          parameters: weatherParameters,
          parse: JSON.parse,
          function: ({ city }) => {
            called.push(city);
            return `sunny in ${city}`;
          },
        },
      },
    ],
  });
  const answer = await runner.finalContent();
  const { data: model, response } = await chat.models.retrieve(env.chatModel).withResponse();
  return {
    deltas,
    reasoning: reasoning.join(''),
    content: final.choices[0].message.content,
    usage: final.usage,
    tool_answer: answer,
    called,
    tool_messages: runner.messages.map((m) => m.role),
    model: model.id,
    request_id: response.headers.get('x-request-id'),
  };
});
