import type { INodeProperties } from 'n8n-workflow';

/** The Prompt's default: the message of a Chat Trigger. */
export const DEFAULT_PROMPT = '={{ $json.chatInput }}';

/** Fields of the worker's /v1/inject response that the node can pass on. */
export const OUTPUT_FIELDS = [
	'system',
	'messages',
	'prompt',
	'usage',
	'trim',
	'role',
	'params',
	'format',
] as const;

const roleProperty: INodeProperties = {
	displayName: 'Role',
	name: 'role',
	type: 'resourceLocator',
	default: { mode: 'list', value: '' },
	required: true,
	description: "The role (a file in the worker's roles folder) to put in front of the conversation",
	modes: [
		{
			displayName: 'From List',
			name: 'list',
			type: 'list',
			placeholder: 'Select a role...',
			typeOptions: {
				searchListMethod: 'searchRoles',
				searchable: true,
			},
		},
		{
			displayName: 'By Name',
			name: 'name',
			type: 'string',
			placeholder: 'e.g. agi-engineer',
			validation: [
				{
					type: 'regex',
					properties: {
						regex: '^[a-z0-9][a-z0-9._-]{0,63}$',
						errorMessage:
							'A role name is lowercase letters, digits, ".", "_" and "-" (the role file name without .md)',
					},
				},
			],
		},
	],
};

// Shown in the node (`@tool: false`) or only when an AI Agent uses it as a tool (`@tool: true`).
const asNode = { '@tool': [false] };
const asTool = { '@tool': [true] };

const inputProperties: INodeProperties[] = [
	{
		displayName: 'Input',
		name: 'input',
		type: 'options',
		noDataExpression: true,
		options: [
			{
				name: 'Prompt',
				value: 'prompt',
				description: 'One user message, e.g. the message from a Chat Trigger',
			},
			{
				name: 'Messages',
				value: 'messages',
				description: 'A whole conversation: a JSON array of {role, content}',
			},
		],
		default: 'prompt',
		displayOptions: { show: asNode },
	},
	{
		displayName: 'Prompt',
		name: 'prompt',
		type: 'string',
		typeOptions: { rows: 4 },
		default: DEFAULT_PROMPT,
		description:
			'The user message. The default reads the message of a Chat Trigger. Empty: the system prompt alone.',
		displayOptions: { show: { ...asNode, input: ['prompt'] } },
	},
	{
		displayName: 'Messages',
		name: 'messages',
		type: 'json',
		default: '={{ $json.messages }}',
		description:
			'A JSON array of messages, e.g. [{"role": "user", "content": "Hi"}], or an expression that returns one',
		displayOptions: { show: { ...asNode, input: ['messages'] } },
	},
];

/** As an AI Agent's tool: the agent asks a question and gets the role's instructions fitted for it. */
const toolProperties: INodeProperties[] = [
	{
		displayName: 'Description',
		name: 'toolDescription',
		type: 'string',
		typeOptions: { rows: 3 },
		// The role's name goes into the description the agent sees (edit it to say more).
		default:
			'={{ "Consult the role " + $parameter.role + ": returns the instructions of that role (its expertise, rules and style), fitted to a small token budget for the question you pass. Call it before answering anything the role covers, then follow what it returns." }}',
		required: true,
		description:
			'What the AI Agent is told this tool does. The default names the chosen role; say in your own words when to use it.',
		displayOptions: { show: asTool },
	},
	{
		displayName: 'Question',
		name: 'question',
		type: 'string',
		typeOptions: { rows: 2 },
		default:
			"={{ $fromAI('question', 'The question or task to get the guidance of the role for', 'string') }}",
		description:
			'The question the instructions are fitted for. By default the agent fills it in; set a fixed text or an expression instead if you like.',
		displayOptions: { show: asTool },
	},
	{
		displayName: 'Budget',
		name: 'toolBudget',
		type: 'number',
		typeOptions: { minValue: 1 },
		default: 1000,
		description:
			"Most tokens the role's instructions may take in the agent's context. The role is cut to fit, least important sections first.",
		displayOptions: { show: asTool },
	},
];

const modelProperty: INodeProperties = {
	displayName: 'Model',
	name: 'model',
	type: 'string',
	default: 'qwen3:8b',
	required: true,
	placeholder: 'e.g. qwen3:8b',
	description:
		'The model the prompt is for. The worker picks the tokenizer, chat format and context window from it.',
};

const optionsProperty: INodeProperties = {
	displayName: 'Options',
	name: 'options',
	type: 'collection',
	placeholder: 'Add Option',
	default: {},
	options: [
		{
			displayName: 'Budget',
			name: 'budget',
			type: 'number',
			typeOptions: { minValue: 1 },
			default: 2000,
			description:
				"Most tokens the system prompt may take. Without it: the role's own budget, else what the context window leaves.",
			displayOptions: { show: asNode },
		},
		{
			displayName: 'Chat Format',
			name: 'format',
			type: 'options',
			options: [
				{ name: 'ChatML (Qwen)', value: 'chatml' },
				{ name: 'Gemma', value: 'gemma' },
				{ name: 'Llama 3', value: 'llama3' },
				{ name: 'Mistral', value: 'mistral' },
			],
			default: 'chatml',
			description: "How the prompt is framed. Without it: the model's own format.",
		},
		{
			displayName: 'Context Policy',
			name: 'contextPolicy',
			type: 'options',
			options: [
				{
					name: 'Keep Role',
					value: 'keep_role',
					description:
						'The role stays the same on every turn; when the conversation outgrows its share, its oldest messages are left out (output: trim.dropped_messages)',
				},
				{
					name: 'Shrink Role',
					value: 'shrink_role',
					description:
						'Every message is kept; the role gives way as the conversation grows (slower: the model server evaluates the whole prompt again)',
				},
			],
			default: 'keep_role',
			description:
				"How the role and a running conversation share the context window. Without it: the role's own, else Keep Role.",
		},
		{
			displayName: 'Context Window',
			name: 'contextWindow',
			type: 'number',
			typeOptions: { minValue: 1 },
			default: 8192,
			description: "Context size in tokens. Without it: the model's.",
		},
		{
			displayName: 'History Share',
			name: 'historyShare',
			type: 'number',
			typeOptions: { minValue: 0.01, maxValue: 0.99, numberPrecision: 2 },
			default: 0.25,
			description:
				"With Keep Role: the share of the context window always left for the conversation. Without it: the role's own, else 0.25.",
		},
		{
			displayName: 'Output Fields',
			name: 'outputFields',
			type: 'multiOptions',
			options: [
				{ name: 'Format', value: 'format', description: 'The chat format used' },
				{
					name: 'Messages',
					value: 'messages',
					description: 'The messages with the fitted system message first',
				},
				{ name: 'Params', value: 'params', description: 'Model options from the role' },
				{ name: 'Prompt', value: 'prompt', description: 'The whole prompt rendered as text' },
				{ name: 'Role', value: 'role', description: 'Role name and version' },
				{ name: 'System', value: 'system', description: 'The fitted system prompt' },
				{ name: 'Trim', value: 'trim', description: 'Which sections were kept, cut or dropped' },
				{ name: 'Usage', value: 'usage', description: 'Token counts, budget and num_ctx' },
			],
			default: [...OUTPUT_FIELDS],
			description: "Which fields of the worker's answer to put on the output item",
			displayOptions: { show: asNode },
		},
		{
			displayName: 'Query',
			name: 'query',
			type: 'string',
			typeOptions: { rows: 2 },
			default: '',
			description:
				'Text to rank the sections by in relevance selection, instead of the conversation; it is not sent to the model. Setting it chooses relevance unless Selection says Priority.',
		},
		{
			displayName: 'Reserve for the Answer',
			name: 'reserveOutput',
			type: 'number',
			typeOptions: { minValue: 0 },
			default: 1024,
			description: "Tokens kept free in the context window for the model's answer",
		},
		{
			displayName: 'Selection',
			name: 'selection',
			type: 'options',
			options: [
				{
					name: 'Priority',
					value: 'priority',
					description: 'The sections with the highest priority, whatever the question',
				},
				{
					name: 'Relevance',
					value: 'relevance',
					description: 'The sections the conversation is about, its last user message first',
				},
			],
			default: 'relevance',
			description:
				"How the sections beyond the required ones are chosen when the role does not fit. Without it: the role's own setting.",
		},
		{
			displayName: 'Variables',
			name: 'variables',
			type: 'fixedCollection',
			placeholder: 'Add Variable',
			typeOptions: { multipleValues: true },
			default: {},
			description:
				"Values for the role's {{variables}}. A role that needs a variable fails without it: set it here.",
			options: [
				{
					displayName: 'Variable',
					name: 'values',
					values: [
						{
							displayName: 'Name or ID',
							name: 'name',
							type: 'options',
							typeOptions: {
								loadOptionsMethod: 'roleVariables',
								loadOptionsDependsOn: ['role.value'],
							},
							default: '',
							description:
								'One of the role\'s declared variables (required ones are marked). Choose from the list, or specify an ID using an <a href="https://docs.n8n.io/code/expressions/">expression</a>.',
						},
						{
							displayName: 'Value',
							name: 'value',
							type: 'string',
							default: '',
						},
					],
				},
			],
		},
		{
			displayName: 'Variables (JSON)',
			name: 'variablesJson',
			type: 'json',
			default: '{}',
			description:
				'Values for the role\'s {{variables}} as one JSON object, e.g. {"user_name": "Ada"}, or an expression that returns one (an object or JSON text). Values are text; numbers and true/false become text. A name also set under Variables takes the value set there.',
		},
	],
};

export const properties: INodeProperties[] = [
	roleProperty,
	...inputProperties,
	...toolProperties,
	modelProperty,
	optionsProperty,
];
