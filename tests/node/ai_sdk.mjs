// Vercel AI SDK with @ai-sdk/openai: .responses(...) for a two-turn conversation and a two-step
// tool loop (store on, the default: earlier items go back as item references), and .chat(...).
import { createOpenAI } from '@ai-sdk/openai';
import { generateText, stepCountIs, streamText, tool } from 'ai';
import { z } from 'zod';
import { env, main } from './common.mjs';

const weather = (called) =>
  tool({
    description: 'Current weather for a city',
    inputSchema: z.object({ city: z.string() }),
    execute: async ({ city }) => {
      called.push(city);
      return `sunny in ${city}`;
    },
  });

async function conversation(model, providerOptions) {
  const messages = [{ role: 'user', content: 'Hi' }];
  const first = await generateText({ model, messages, providerOptions });
  messages.push(...first.response.messages, { role: 'user', content: 'Again' });
  const second = streamText({ model, messages, providerOptions });
  const deltas = [];
  for await (const delta of second.textStream) deltas.push(delta);
  const body = (await second.request).body;
  const sent = typeof body === 'string' ? JSON.parse(body) : body;
  return {
    turn2_input_types: (sent.input ?? sent.messages ?? []).map((item) => item.type ?? item.role),
    first: first.text,
    first_reasoning: first.reasoningText ?? null,
    second: await second.text,
    second_deltas: deltas.length,
    second_reasoning: (await second.reasoningText) ?? null,
    input_tokens: [first.usage.inputTokens, (await second.usage).inputTokens],
  };
}

async function toolLoop(model, providerOptions) {
  const called = [];
  const result = await generateText({
    model,
    prompt: 'What is the weather in Paris?',
    tools: { get_weather: weather(called) },
    stopWhen: stepCountIs(4),
    providerOptions,
  });
  const streamedCalls = [];
  const streamed = streamText({
    model,
    prompt: 'What is the weather in Paris?',
    tools: { get_weather: weather(streamedCalls) },
    stopWhen: stepCountIs(4),
    providerOptions,
  });
  const body = result.steps[1].request.body;
  const sent = typeof body === 'string' ? JSON.parse(body) : body;
  return {
    step2_input_types: (sent.input ?? sent.messages ?? []).map((item) => item.type ?? item.role),
    text: result.text,
    steps: result.steps.map((step) => step.finishReason),
    calls: result.steps.flatMap((step) => step.toolCalls.map((call) => [call.toolName, call.input])),
    reasoning: result.steps[0].reasoningText ?? null,
    called,
    streamed_text: await streamed.text,
    streamed_called: streamedCalls,
  };
}

main(async () => {
  const chat = createOpenAI({ baseURL: `${env.chatURL}/v1`, apiKey: env.apiKey });
  const tools = createOpenAI({ baseURL: `${env.toolsURL}/v1`, apiKey: env.apiKey });
  // A local model id is not on the SDK's list of reasoning models: say that it is one.
  const summary = { openai: { forceReasoning: true, reasoningSummary: 'auto' } };
  return {
    responses: await conversation(chat.responses(env.chatModel), summary),
    responses_tools: await toolLoop(tools.responses(env.toolsModel), summary),
    chat: await conversation(chat.chat(env.chatModel)),
    chat_tools: await toolLoop(tools.chat(env.toolsModel)),
  };
});
