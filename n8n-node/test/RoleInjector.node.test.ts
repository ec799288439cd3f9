import type { IDataObject, INodeExecutionData } from 'n8n-workflow';
import { NodeApiError, NodeOperationError } from 'n8n-workflow';
import { describe, expect, inject, it } from 'vitest';
import { RoleInjector } from '../nodes/RoleInjector/RoleInjector.node';
import { executeContext, roleLocator, type ExecuteOptions, type Parameter } from './context';
import { properties } from '../nodes/RoleInjector/description';
import codex from '../nodes/RoleInjector/RoleInjector.node.json';
import { RoleInjectorApi } from '../credentials/RoleInjectorApi.credentials';
import { API_KEY } from './globalSetup';

const workerUrl = inject('workerUrl');

/** The parameters of a node set up for the `tester` role after a Chat Trigger. */
function parameters(overrides: Record<string, Parameter> = {}): Record<string, Parameter> {
	return {
		role: roleLocator('tester'),
		input: 'prompt',
		prompt: (item: INodeExecutionData) => item.json.chatInput,
		model: 'qwen3:8b',
		options: { variables: { values: [{ name: 'user_name', value: 'Ada' }] } },
		...overrides,
	};
}

/** Options with the item's `name` as the user_name variable; items without one leave it out. */
function userNameFromItem(item: INodeExecutionData) {
	const values = item.json.name ? [{ name: 'user_name', value: item.json.name }] : [];
	return { variables: { values } };
}

async function run(options: Partial<ExecuteOptions> = {}): Promise<INodeExecutionData[]> {
	const context = executeContext({
		credentials: { url: workerUrl },
		parameters: parameters(),
		items: [{ chatInput: 'Hello' }],
		...options,
	});
	const [output] = await new RoleInjector().execute.call(context);
	return output;
}

/** The error that running the node throws. */
async function failure(
	options: Partial<ExecuteOptions>,
): Promise<NodeApiError | NodeOperationError> {
	try {
		await run(options);
	} catch (error) {
		return error as NodeApiError | NodeOperationError;
	}
	throw new Error('the node did not fail');
}

describe('execute', () => {
	it('puts the fitted role in front of the prompt of one item', async () => {
		const [item] = await run();

		expect(item.pairedItem).toEqual({ item: 0 });
		expect(Object.keys(item.json).sort()).toEqual([
			'format',
			'messages',
			'params',
			'prompt',
			'role',
			'system',
			'trim',
			'usage',
		]);
		const { system, messages, prompt, role, usage, format, params } = item.json as IDataObject &
			Record<'usage' | 'role', IDataObject>;
		expect(system).toContain('Help Ada check that the node works');
		expect(messages).toEqual([
			{ role: 'system', content: system },
			{ role: 'user', content: 'Hello' },
		]);
		expect(prompt).toBe(
			`<|im_start|>system\n${system}<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n`,
		);
		expect(format).toBe('chatml');
		expect(params).toEqual({ temperature: 0.2 });
		expect(role.name).toBe('tester');
		expect(usage.num_ctx).toBeGreaterThan(0);
	});

	it('answers every item with its own prompt and variables', async () => {
		const names = ['Ada', 'Grace', 'Linus'];
		const output = await run({
			items: names.map((name) => ({ chatInput: `I am ${name}`, name })),
			parameters: parameters({
				options: userNameFromItem,
			}),
		});

		expect(output).toHaveLength(3);
		output.forEach((item, i) => {
			expect(item.pairedItem).toEqual({ item: i });
			expect(item.json.system).toContain(`Help ${names[i]} check`);
			expect((item.json.messages as IDataObject[]).at(-1)).toEqual({
				role: 'user',
				content: `I am ${names[i]}`,
			});
		});
	});

	it('sends no user message when the Prompt is left empty', async () => {
		const [item] = await run({ items: [{}], parameters: parameters({ prompt: '' }) });

		expect(item.json.messages).toEqual([{ role: 'system', content: item.json.system }]);
	});

	it('fails naming the Prompt when its expression gives nothing', async () => {
		// The default Prompt reads a Chat Trigger's message; after a Manual Trigger there is none.
		const error = await failure({ items: [{ chatInput: 'Hi' }, {}] });

		expect(error).toBeInstanceOf(NodeOperationError);
		expect(error.message).toBe('The Prompt is empty for item 2: {{ prompt of the item }} gives nothing');
		expect(error.description).toContain('clear Prompt');
	});

	it('sends the query that ranks the sections', async () => {
		const [item] = await run({
			parameters: parameters({
				options: { query: 'poems about the sea', variables: { values: [{ name: 'user_name', value: 'Ada' }] } },
			}),
		});

		expect((item.json.trim as IDataObject).selection).toBe('relevance');
	});

	it('sends a conversation given as an array', async () => {
		const conversation = [
			{ role: 'user', content: 'Hi' },
			{ role: 'assistant', content: 'Hello, Ada.' },
			{ role: 'user', content: 'Check the node.' },
		];
		const [item] = await run({
			parameters: parameters({ input: 'messages', messages: conversation }),
		});

		expect(item.json.messages).toEqual([
			{ role: 'system', content: item.json.system },
			...conversation,
		]);
	});

	it('accepts the conversation as a JSON string', async () => {
		const [item] = await run({
			parameters: parameters({
				input: 'messages',
				messages: '[{"role": "user", "content": "From JSON"}]',
			}),
		});

		expect((item.json.messages as IDataObject[])[1]).toEqual({
			role: 'user',
			content: 'From JSON',
		});
	});

	it.each([
		['text that is not JSON', '[{"role": "user"', /not valid JSON/],
		['an object', { role: 'user', content: 'Hi' }, /must be an array/],
		['a message without content', [{ role: 'user' }], /Message 1 needs a "role" and a "content"/],
		['a message that is a string', ['Hi'], /Message 1 needs/],
	])('rejects messages given as %s', async (_, messages, message) => {
		const error = await failure({ parameters: parameters({ input: 'messages', messages }) });

		expect(error).toBeInstanceOf(NodeOperationError);
		expect(error.message).toMatch(message);
		expect(error.context.itemIndex).toBe(0);
	});

	it('sends the options that are set', async () => {
		const [item] = await run({
			parameters: parameters({
				options: {
					budget: 40,
					contextWindow: 4096,
					reserveOutput: 256,
					format: 'llama3',
					variables: {
						values: [
							{ name: 'user_name', value: 'Ada' },
							{ name: 'language', value: 'French' },
						],
					},
				},
			}),
		});

		const usage = item.json.usage as IDataObject;
		expect(usage).toMatchObject({ budget: 40, context_window: 4096, reserve_output: 256 });
		expect(usage.system_tokens).toBeLessThanOrEqual(40);
		expect(item.json.format).toBe('llama3');
		expect(item.json.prompt).toMatch(/^<\|begin_of_text\|><\|start_header_id\|>system/);
		expect(item.json.system).toContain('answer in French');
		expect(item.json.trim).toMatchObject({ trimmed: true });
	});

	it('sends the selection, so sections are picked by the question', async () => {
		const selected = async (selection: string) => {
			const [item] = await run({
				parameters: parameters({
					options: {
						budget: 55,
						selection,
						variables: { values: [{ name: 'user_name', value: 'Ada' }] },
					},
				}),
				items: [{ chatInput: 'Does the node send the variables?' }],
			});
			return item.json;
		};
		const byRelevance = await selected('relevance');
		const byPriority = await selected('priority');

		expect(byRelevance.trim).toMatchObject({ selection: 'relevance' });
		expect(byRelevance.system).toContain('## Examples');
		expect(byRelevance.system).not.toContain('## Style');
		const sections = (byRelevance.trim as IDataObject).sections as IDataObject[];
		expect(sections.find((s) => s.title === 'Examples')).toMatchObject({ reason: 'relevance' });
		expect(byPriority.trim).toMatchObject({ selection: 'priority' });
		expect(byPriority.system).toContain('## Style');
		expect(byPriority.system).not.toContain('## Examples');
	});

	it('leaves out the options that are not set', async () => {
		const [item] = await run();

		// The role's own budget and the model's format and context window apply.
		expect(item.json.usage).toMatchObject({
			budget: 1000,
			context_window: 8192,
			reserve_output: 1024,
		});
		expect(item.json.format).toBe('chatml');
		expect(item.json.system).toContain('answer in English');
	});

	it('reports the oldest messages the context policy left out', async () => {
		const long = 'Check the deploy, the rollback and the canary before the window closes. '.repeat(100);
		const conversation = [
			{ role: 'user', content: long },
			{ role: 'assistant', content: long },
			{ role: 'user', content: 'And now?' },
		];
		const options = { contextWindow: 2048, reserveOutput: 256, variablesJson: '{"user_name": "Ada"}' };
		const [kept] = await run({
			parameters: parameters({ input: 'messages', messages: conversation, options }),
		});

		expect(kept.json.trim).toMatchObject({ dropped_messages: 2 });
		expect(kept.json.messages).toEqual([
			{ role: 'system', content: kept.json.system },
			{ role: 'user', content: 'And now?' },
		]);
		expect(kept.json.usage).toMatchObject({ context_policy: 'keep_role', history_share: 0.25 });

		// Shrink Role keeps every message: this conversation cannot fit the window at all.
		const error = await failure({
			parameters: parameters({
				input: 'messages',
				messages: conversation,
				options: { ...options, contextPolicy: 'shrink_role' },
			}),
		});
		expect(error.description).toContain('context_overflow');
	});

	it('sends the context policy and the history share', async () => {
		const [item] = await run({
			parameters: parameters({
				options: {
					contextPolicy: 'shrink_role',
					historyShare: 0.4,
					variables: { values: [{ name: 'user_name', value: 'Ada' }] },
				},
			}),
		});

		expect(item.json.usage).toMatchObject({ context_policy: 'shrink_role', history_share: 0.4 });
		expect(item.json.trim).toMatchObject({ dropped_messages: 0 });
	});

	it('rejects a history share outside 0 to 1', async () => {
		const error = await failure({
			parameters: parameters({ options: { historyShare: 1.5 } }),
		});

		expect(error).toBeInstanceOf(NodeOperationError);
		expect(error.message).toMatch(/"History Share" must be a number greater than 0 and less than 1/);
	});

	it('takes the role typed by name', async () => {
		const [item] = await run({
			parameters: parameters({ role: roleLocator('poet', 'name'), options: {} }),
		});

		expect(item.json.role).toMatchObject({ name: 'poet' });
	});

	it('puts only the chosen output fields on the item', async () => {
		const [item] = await run({
			parameters: parameters({
				options: {
					outputFields: ['usage', 'system'],
					variables: { values: [{ name: 'user_name', value: 'Ada' }] },
				},
			}),
		});

		expect(Object.keys(item.json)).toEqual(['system', 'usage']);
	});
});

describe('errors', () => {
	it('reports an unknown role with the names it may have meant', async () => {
		const error = await failure({ parameters: parameters({ role: roleLocator('testr', 'name') }) });

		expect(error).toBeInstanceOf(NodeApiError);
		expect(error.message).toBe("role 'testr' not found; did you mean tester?");
		expect(error.description).toContain('role_not_found');
		// The worker's message names the close names; the description does not say it again.
		expect(`${error.message} ${error.description}`.match(/did you mean/gi)).toHaveLength(1);
		expect((error as NodeApiError).httpCode).toBe('404');
		expect(error.context.itemIndex).toBe(0);
	});

	it('reports a missing required variable', async () => {
		const error = await failure({ parameters: parameters({ options: {} }) });

		expect(error).toBeInstanceOf(NodeApiError);
		expect(error.message).toContain('user_name');
		expect(error.description).toContain('missing_variable');
		expect(error.description).toContain('Options → Variables');
		expect((error as NodeApiError).httpCode).toBe('422');
	});

	it('reports a budget smaller than the required sections', async () => {
		const error = await failure({
			parameters: parameters({
				options: { budget: 3, variables: { values: [{ name: 'user_name', value: 'Ada' }] } },
			}),
		});

		expect(error).toBeInstanceOf(NodeApiError);
		expect(error.description).toContain('budget_too_small');
		expect(error.description).toContain('"needed"');
		expect((error as NodeApiError).httpCode).toBe('422');
	});

	it('names the item that failed', async () => {
		const error = await failure({
			items: [{ chatInput: 'one', name: 'Ada' }, { chatInput: 'two' }],
			parameters: parameters({
				options: userNameFromItem,
			}),
		});

		expect(error).toBeInstanceOf(NodeApiError);
		expect(error.context.itemIndex).toBe(1);
	});

	it('rejects a wrong API key', async () => {
		const error = await failure({
			credentials: { url: inject('securedWorkerUrl'), apiKey: 'wrong-key' },
		});

		expect(error).toBeInstanceOf(NodeApiError);
		expect(error.description).toContain('unauthorized');
		expect((error as NodeApiError).httpCode).toBe('401');
	});

	it('rejects a missing API key when the worker has one', async () => {
		const error = await failure({ credentials: { url: inject('securedWorkerUrl') } });

		expect((error as NodeApiError).httpCode).toBe('401');
	});

	it('sends the API key as a bearer token', async () => {
		const [item] = await run({
			credentials: { url: `${inject('securedWorkerUrl')}/`, apiKey: API_KEY },
		});

		expect(item.json.role).toMatchObject({ name: 'tester' });
	});

	it('names the URL it cannot reach', async () => {
		const closedUrl = inject('closedUrl');
		const error = await failure({ credentials: { url: closedUrl } });

		expect(error).toBeInstanceOf(NodeApiError);
		expect(error.message).toMatch(
			new RegExp(
				`^Cannot reach the Role Injector worker at ${closedUrl}/v1/inject: .*ECONNREFUSED`,
			),
		);
		expect(error.context.itemIndex).toBe(0);
	});

	it.each([
		['no role', { role: roleLocator('') }, /No role chosen/],
		['no model', { model: '' }, /No model given/],
		[
			'a budget that is not a number',
			{ options: { budget: 'lots' } },
			/"Budget" must be a whole number/,
		],
		[
			'a variable without a name',
			{ options: { variables: { values: [{ name: ' ', value: 'x' }] } } },
			/Variable 1 has no name/,
		],
		['a prompt that is not text', { prompt: { text: 'Hi' } }, /prompt must be text/],
	])('rejects %s before calling the worker', async (_, overrides, message) => {
		// The closed port shows that no request is made.
		const error = await failure({
			credentials: { url: inject('closedUrl') },
			parameters: parameters(overrides),
		});

		expect(error).toBeInstanceOf(NodeOperationError);
		expect(error.message).toMatch(message);
		expect(error.context.itemIndex).toBe(0);
	});

	it('goes on after a failed item when the node continues on fail', async () => {
		const output = await run({
			continueOnFail: true,
			items: [
				{ chatInput: 'one', name: 'Ada' },
				{ chatInput: 'two' },
				{ chatInput: 'three', name: 'Grace' },
			],
			parameters: parameters({
				options: userNameFromItem,
			}),
		});

		expect(output).toHaveLength(3);
		expect(output.map((item) => item.pairedItem)).toEqual([{ item: 0 }, { item: 1 }, { item: 2 }]);
		expect(output[0].json.system).toContain('Ada');
		expect(output[1].json).toEqual({ error: expect.stringContaining('user_name') });
		expect(output[2].json.system).toContain('Grace');
	});
});

describe('Variables (JSON)', () => {
	/** Options with only the JSON variables set (no name/value pairs). */
	const jsonOnly = (variablesJson: Parameter) => parameters({ options: { variablesJson } });

	it('puts the values of an object into the system prompt', async () => {
		const [item] = await run({
			parameters: jsonOnly({ user_name: 'Грета', language: 'French' }),
		});

		expect(item.json.system).toContain('Help Грета check that the node works');
		expect(item.json.system).toContain('answer in French');
	});

	it('takes a JSON string of an object', async () => {
		const [item] = await run({ parameters: jsonOnly('{"user_name": "Grace"}') });

		expect(item.json.system).toContain('Help Grace check');
		expect(item.json.system).toContain('answer in English');
	});

	it("reads each item's own object, as an expression would", async () => {
		const output = await run({
			items: [
				{ chatInput: 'one', body: { variables: { user_name: 'Ada' } } },
				{ chatInput: 'two', body: { variables: '{"user_name": "Linus"}' } },
			],
			parameters: parameters({
				options: (item: INodeExecutionData) => ({
					variablesJson: (item.json.body as IDataObject).variables,
				}),
			}),
		});

		expect(output.map((item) => item.json.system)).toEqual([
			expect.stringContaining('Help Ada check'),
			expect.stringContaining('Help Linus check'),
		]);
	});

	it('turns numbers and booleans into text', async () => {
		const [item] = await run({ parameters: jsonOnly({ user_name: 42, language: true }) });

		expect(item.json.system).toContain('Help 42 check');
		expect(item.json.system).toContain('answer in true');
	});

	it('is merged with the name/value pairs, which win on a clash', async () => {
		const [item] = await run({
			parameters: parameters({
				options: {
					variablesJson: { user_name: 'FromJson', language: 'French' },
					variables: { values: [{ name: 'user_name', value: 'FromPair' }] },
				},
			}),
		});

		expect(item.json.system).toContain('Help FromPair check');
		expect(item.json.system).toContain('answer in French');
		expect(item.json.system).not.toContain('FromJson');
	});

	it.each([
		['an empty object', {}],
		['an empty string', ''],
		['blank text', '  \n'],
		['an empty JSON object', '{}'],
		['no value', undefined],
		['null', null],
	])('sends no variables for %s', async (_, variablesJson) => {
		// The poet declares no variables: the worker would refuse any.
		const [item] = await run({
			parameters: parameters({ role: roleLocator('poet', 'name'), options: { variablesJson } }),
		});

		expect(item.json.role).toMatchObject({ name: 'poet' });
	});

	it('leaves a required variable missing when empty', async () => {
		const error = await failure({ parameters: jsonOnly('{}') });

		expect(error).toBeInstanceOf(NodeApiError);
		expect(error.description).toContain('missing_variable');
	});

	it.each([
		['text that is not JSON', '{"user_name": ', /^Variables \(JSON\) is not valid JSON/],
		['a JSON array', '["Ada"]', /^Variables \(JSON\) must be an object, not an array$/],
		['a JSON string', '"Ada"', /must be an object, not string$/],
		['JSON null', 'null', /must be an object, not null$/],
		['a number', 42, /must be an object, not number$/],
		['an array', [{ user_name: 'Ada' }], /must be an object, not an array$/],
		[
			'an object as a value',
			{ user_name: { first: 'Ada' } },
			/^Variable "user_name" in Variables \(JSON\) must be text, not object$/,
		],
		['null as a value', '{"language": null}', /^Variable "language" .* must be text, not null$/],
		['a list as a value', { user_name: ['Ada'] }, /^Variable "user_name" .* not an array$/],
	])('rejects %s before calling the worker', async (_, variablesJson, message) => {
		const error = await failure({
			credentials: { url: inject('closedUrl') },
			parameters: jsonOnly(variablesJson),
		});

		expect(error).toBeInstanceOf(NodeOperationError);
		expect(error.message).toMatch(message);
		expect(error.description).toContain('{"user_name": "Ada"}');
		expect(error.context.itemIndex).toBe(0);
	});

	it('names the item whose variables are wrong', async () => {
		const error = await failure({
			items: [
				{ chatInput: 'one', variables: { user_name: 'Ada' } },
				{ chatInput: 'two', variables: { user_name: 7, extra: { nested: true } } },
			],
			parameters: parameters({
				options: (item: INodeExecutionData) => ({ variablesJson: item.json.variables }),
			}),
		});

		expect(error).toBeInstanceOf(NodeOperationError);
		expect(error.message).toMatch(/^Variable "extra" /);
		expect(error.context.itemIndex).toBe(1);
	});
});

describe('as an AI Agent tool', () => {
	const TOOL_TYPE = 'n8n-nodes-role-injector.roleInjectorTool';

	/** The tool's parameters as n8n resolves them: the question comes from the agent ($fromAI). */
	function toolParameters(overrides: Record<string, Parameter> = {}): Record<string, Parameter> {
		return {
			role: roleLocator('tester'),
			question: 'Does the node send the variables?',
			toolBudget: 1000,
			model: 'qwen3:8b',
			options: { variables: { values: [{ name: 'user_name', value: 'Ada' }] } },
			...overrides,
		};
	}

	it("answers the agent's question with the role's instructions and nothing else", async () => {
		const [item] = await run({
			nodeType: TOOL_TYPE,
			parameters: toolParameters(),
			items: [{ question: 'Does the node send the variables?' }],
		});

		expect(Object.keys(item.json).sort()).toEqual(['instructions', 'role', 'shortened', 'tokens']);
		expect(item.json.role).toBe('tester');
		expect(item.json.instructions).toContain('Help Ada check that the node works');
		expect(item.json.tokens).toBeGreaterThan(0);
		expect(item.json.shortened).toBe(false);
		expect(item.pairedItem).toEqual({ item: 0 });
	});

	it("fits the instructions into the tool's budget", async () => {
		const full = await run({ nodeType: TOOL_TYPE, parameters: toolParameters() });
		const tokens = full[0].json.tokens as number;
		const [item] = await run({
			nodeType: TOOL_TYPE,
			parameters: toolParameters({ toolBudget: tokens - 1 }),
		});

		expect(item.json.tokens as number).toBeLessThan(tokens);
		expect(item.json.shortened).toBe(true);
		expect(item.json.instructions).toContain('Help Ada check that the node works');
	});

	it('reports a worker error to the agent like the node does', async () => {
		const error = await failure({
			nodeType: TOOL_TYPE,
			parameters: toolParameters({ options: {} }),
		});

		expect(error).toBeInstanceOf(NodeApiError);
		expect(error.description).toContain('Options → Variables');
	});
});

describe('description', () => {
	const byName = Object.fromEntries(properties.map((property) => [property.name, property]));

	it('shows the chosen role as the subtitle on the canvas', () => {
		// n8n's $parameter gives a resource locator's value (the role name), not the locator.
		expect(new RoleInjector().description.subtitle).toBe('={{ $parameter["role"] }}');
	});

	it('lets the agent fill in the question and names the role in the tool description', () => {
		expect(byName.question.displayOptions?.show?.['@tool']).toEqual([true]);
		expect(byName.question.default).toMatch(/^=\{\{ \$fromAI\('question', /);
		expect(byName.toolDescription.displayOptions?.show?.['@tool']).toEqual([true]);
		expect(byName.toolDescription.default).toContain('$parameter.role');
		expect(byName.toolBudget.displayOptions?.show?.['@tool']).toEqual([true]);
	});

	it('is a regular node for the nodes panel, so searching its name finds it in any workflow', () => {
		// n8n's node creator leaves "AI" nodes out of search until the canvas holds an AI node
		// (unless they are AI root nodes); the AI Agent offers the node as a tool all the same.
		expect(codex.categories).not.toContain('AI');
		expect(codex.subcategories).toEqual({ 'Core Nodes': ['Data Transformation'] });
		expect(new RoleInjector().description.usableAsTool).toBeTruthy();
	});

	it("links its docs to the worker's page of the package README (the package is not on the registry)", () => {
		// tests/worker/rest/test_rest_docs.py checks that the worker serves it, anchors included.
		const page = 'http://localhost:8000/docs/n8n-node';
		expect(codex.resources.primaryDocumentation[0].url).toBe(page);
		expect(codex.resources.credentialDocumentation[0].url).toBe(`${page}#credentials`);
		expect(new RoleInjectorApi().documentationUrl).toBe(`${page}#credentials`);
	});

	it('keeps the chat input and the output fields for the node, not the tool', () => {
		for (const name of ['input', 'prompt', 'messages']) {
			expect(byName[name].displayOptions?.show?.['@tool']).toEqual([false]);
		}
	});
});
