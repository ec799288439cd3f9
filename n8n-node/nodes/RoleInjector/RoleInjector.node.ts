import type {
	IDataObject,
	IExecuteFunctions,
	INodeExecutionData,
	INodeType,
	INodeTypeDescription,
	JsonObject,
} from 'n8n-workflow';
import { NodeApiError, NodeConnectionTypes, NodeOperationError } from 'n8n-workflow';
import { DEFAULT_PROMPT, OUTPUT_FIELDS, properties } from './description';
import { searchRoles } from './methods/listSearch';
import { roleVariables } from './methods/loadOptions';
import { CREDENTIAL_TYPE, workerRequest } from './transport';

type Options = {
	budget?: unknown;
	contextWindow?: unknown;
	reserveOutput?: unknown;
	format?: string;
	contextPolicy?: string;
	historyShare?: unknown;
	selection?: string;
	query?: unknown;
	variables?: { values?: Array<{ name?: unknown; value?: unknown }> };
	variablesJson?: unknown;
	outputFields?: string[];
};

export class RoleInjector implements INodeType {
	description: INodeTypeDescription = {
		displayName: 'Role Injector',
		name: 'roleInjector',
		icon: {
			light: 'file:../../icons/role-injector.svg',
			dark: 'file:../../icons/role-injector.dark.svg',
		},
		group: ['transform'],
		version: 1,
		// n8n hands a resource locator's value (the role name) to expressions, not the locator object.
		subtitle: '={{ $parameter["role"] }}',
		description:
			"Puts a role (a large system prompt kept in files) in front of a prompt, fitted to the model's token budget and chat format",
		defaults: { name: 'Role Injector' },
		// As a tool the node answers an AI Agent's question with the role's fitted instructions
		// (see toolAnswer); the tool-only parameters are in description.ts.
		usableAsTool: {
			replacements: {
				description:
					"Gives an AI Agent a role's instructions (a system prompt kept in files), fitted to a small token budget for its question",
			},
		},
		inputs: [NodeConnectionTypes.Main],
		outputs: [NodeConnectionTypes.Main],
		credentials: [{ name: CREDENTIAL_TYPE, required: true }],
		properties,
	};

	methods = {
		listSearch: { searchRoles },
		loadOptions: { roleVariables },
	};

	async execute(this: IExecuteFunctions): Promise<INodeExecutionData[][]> {
		const items = this.getInputData();
		const returnData: INodeExecutionData[] = [];

		// n8n names the tool variant of a node `<name>Tool`.
		const asTool = this.getNode().type.endsWith('Tool');

		for (let i = 0; i < items.length; i++) {
			try {
				const options = this.getNodeParameter('options', i, {}) as Options;
				const body = asTool ? toolBody(this, i, options) : injectBody(this, i, options);
				const answer = await workerRequest.call(this, 'POST', '/v1/inject', body, i);
				const json = asTool ? toolAnswer(answer) : pickFields(answer, options.outputFields);
				returnData.push({ json, pairedItem: { item: i } });
			} catch (error) {
				if (this.continueOnFail()) {
					returnData.push({ json: { error: (error as Error).message }, pairedItem: { item: i } });
					continue;
				}
				// The node's own errors were made with their itemIndex, and wrapping one in its own class
				// hands it back unchanged (n8n-workflow); only a foreign error gets the itemIndex here.
				if (error instanceof NodeApiError) throw new NodeApiError(this.getNode(), error as unknown as JsonObject);
				throw new NodeOperationError(this.getNode(), error as Error, { itemIndex: i });
			}
		}

		return [returnData];
	}
}

/** The chosen fields of the worker's answer (all by default). */
function pickFields(answer: IDataObject, fields: string[] = [...OUTPUT_FIELDS]): IDataObject {
	const json: IDataObject = {};
	for (const field of OUTPUT_FIELDS) {
		if (fields.includes(field) && field in answer) json[field] = answer[field];
	}
	return json;
}

/**
 * What an AI Agent gets back from the tool: the role's instructions fitted for its question, and
 * little else. The whole answer (messages, ChatML prompt, trim report) would cost the agent
 * thousands of tokens of its own context for nothing it can use.
 */
function toolAnswer(answer: IDataObject): IDataObject {
	const role = (answer.role ?? {}) as IDataObject;
	const usage = (answer.usage ?? {}) as IDataObject;
	const trim = (answer.trim ?? {}) as IDataObject;
	return {
		role: role.name,
		instructions: answer.system,
		tokens: usage.system_tokens,
		shortened: trim.trimmed === true,
	};
}

type Fail = (message: string, description?: string) => NodeOperationError;

function failer(context: IExecuteFunctions, i: number): Fail {
	return (message, description) =>
		new NodeOperationError(context.getNode(), message, { itemIndex: i, description });
}

/** The POST /v1/inject body for one item; options that are not set are left out. */
function injectBody(context: IExecuteFunctions, i: number, options: Options): IDataObject {
	const fail = failer(context, i);
	const body = roleAndModel(context, i, fail);

	if (context.getNodeParameter('input', i, 'prompt') === 'messages') {
		body.messages = parseMessages(context.getNodeParameter('messages', i, '[]'), fail);
	} else {
		const prompt = context.getNodeParameter('prompt', i, '');
		if (typeof prompt === 'object' && prompt !== null) {
			throw fail('The prompt must be text', 'To send a conversation, set Input to "Messages".');
		}
		if (prompt !== undefined && prompt !== null && prompt !== '') {
			body.prompt = String(prompt);
		} else if (context.getNode().parameters.prompt !== '') {
			// An expression (the default reads a Chat Trigger's message) that gave nothing: say so rather
			// than answer with a system prompt and no question. A Prompt left empty asks for that.
			const written = String(context.getNode().parameters.prompt ?? DEFAULT_PROMPT).replace(/^=/, '');
			throw fail(
				`The Prompt is empty for item ${i + 1}: ${written} gives nothing`,
				'The default, {{ $json.chatInput }}, is the message of a Chat Trigger. After another trigger, set Prompt to your text or an expression that gives it; to ask for the system prompt alone, clear Prompt.',
			);
		}
	}
	return { ...body, ...optionFields(options, fail) };
}

/** The body when an AI Agent calls the node as a tool: its question, within the tool's budget. */
function toolBody(context: IExecuteFunctions, i: number, options: Options): IDataObject {
	const fail = failer(context, i);
	const body = roleAndModel(context, i, fail);
	const question = context.getNodeParameter('question', i, '');
	if (typeof question !== 'string' && typeof question !== 'number') {
		throw fail('The question must be text');
	}
	if (String(question).trim()) body.prompt = String(question);
	const budget = context.getNodeParameter('toolBudget', i, 1000);
	return {
		...body,
		...optionFields({ ...options, budget }, fail),
	};
}

function roleAndModel(context: IExecuteFunctions, i: number, fail: Fail): IDataObject {
	const role = String(context.getNodeParameter('role', i, '', { extractValue: true }) ?? '').trim();
	if (!role) throw fail('No role chosen', 'Pick a role from the list or type its name.');
	const model = String(context.getNodeParameter('model', i, '') ?? '').trim();
	if (!model) throw fail('No model given', 'Type the model name, e.g. qwen3:8b.');
	return { role, model };
}

/**
 * The request fields that the Options collection sets. To add an option: declare it in
 * description.ts (optionsProperty), add it to `Options`, and map it here.
 */
function optionFields(options: Options, fail: Fail): IDataObject {
	const body: IDataObject = {};
	// The name/value pairs are applied last: on a clash they win over the JSON object.
	const variables = parseVariablesJson(options.variablesJson, fail);
	(options.variables?.values ?? []).forEach((variable, n) => {
		const name = String(variable.name ?? '').trim();
		if (!name) throw fail(`Variable ${n + 1} has no name`);
		variables[name] = String(variable.value ?? '');
	});
	if (Object.keys(variables).length > 0) body.variables = variables;

	const numbers = [
		['budget', 'Budget', options.budget, 1],
		['context_window', 'Context Window', options.contextWindow, 1],
		['reserve_output', 'Reserve for the Answer', options.reserveOutput, 0],
	] as const;
	for (const [key, label, value, min] of numbers) {
		if (value === undefined || value === '') continue;
		const number = Number(value);
		if (!Number.isInteger(number) || number < min) {
			throw fail(
				`"${label}" must be a whole number of at least ${min}, not ${JSON.stringify(value)}`,
			);
		}
		body[key] = number;
	}
	if (options.format) body.format = options.format;
	if (options.contextPolicy) body.context_policy = options.contextPolicy;
	if (options.historyShare !== undefined && options.historyShare !== '') {
		const share = Number(options.historyShare);
		if (!(share > 0 && share < 1)) {
			throw fail(
				`"History Share" must be a number greater than 0 and less than 1, not ${JSON.stringify(options.historyShare)}`,
			);
		}
		body.history_share = share;
	}
	if (options.selection) body.selection = options.selection;
	if (typeof options.query === 'string' && options.query.trim()) body.query = options.query;
	return body;
}

/** Messages from the node parameter: an array, or a JSON string of one, of {role, content}. */
function parseMessages(value: unknown, fail: Fail): IDataObject[] {
	const shape = 'Expected a JSON array like [{"role": "user", "content": "Hi"}].';
	let messages = value;
	if (typeof messages === 'string') {
		try {
			messages = JSON.parse(messages);
		} catch (error) {
			throw fail(`Messages is not valid JSON: ${(error as Error).message}`, shape);
		}
	}
	if (!Array.isArray(messages)) throw fail('Messages must be an array', shape);
	return messages.map((message: unknown, n) => {
		const { role, content } = (message ?? {}) as IDataObject;
		if (typeof role !== 'string' || !role || typeof content !== 'string') {
			throw fail(`Message ${n + 1} needs a "role" and a "content" string`, shape);
		}
		return { role, content };
	});
}

/** Variables from the JSON option: an object, or a JSON string of one, of text values. Nothing
 * (empty text, an empty object, no value) means no variables. */
function parseVariablesJson(value: unknown, fail: Fail): Record<string, string> {
	const shape = 'Expected a JSON object like {"user_name": "Ada"}.';
	let object = value;
	if (typeof object === 'string') {
		if (!object.trim()) return {};
		try {
			object = JSON.parse(object);
		} catch (error) {
			throw fail(`Variables (JSON) is not valid JSON: ${(error as Error).message}`, shape);
		}
	} else if (object === undefined || object === null) {
		return {};
	}
	if (typeof object !== 'object' || object === null || Array.isArray(object)) {
		throw fail(`Variables (JSON) must be an object, not ${kindOf(object)}`, shape);
	}
	const variables: Record<string, string> = {};
	for (const [name, text] of Object.entries(object)) {
		if (typeof text !== 'string' && typeof text !== 'number' && typeof text !== 'boolean') {
			throw fail(`Variable "${name}" in Variables (JSON) must be text, not ${kindOf(text)}`, shape);
		}
		variables[name] = String(text);
	}
	return variables;
}

function kindOf(value: unknown): string {
	if (Array.isArray(value)) return 'an array';
	return value === null ? 'null' : typeof value;
}
