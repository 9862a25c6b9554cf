// Shared by the client-matrix scripts: where the servers are (from tests/test_clients.py).
export const env = {
  chatURL: process.env.CHAT_BASE_URL, // scripted Qwen3: reasoning, then "Hello there!"
  toolsURL: process.env.TOOLS_BASE_URL, // scripted Gemma 4: reasoning + get_weather call, then the answer
  apiKey: process.env.API_KEY,
  chatModel: process.env.CHAT_MODEL,
  toolsModel: process.env.TOOLS_MODEL,
};

export const weatherParameters = {
  type: 'object',
  properties: { city: { type: 'string' } },
  required: ['city'],
};

export function report(result) {
  process.stdout.write(JSON.stringify(result) + '\n');
}

export function main(run) {
  run().then(report, (error) => {
    process.stderr.write(`${error?.stack ?? error}\n`);
    process.exit(1);
  });
}
