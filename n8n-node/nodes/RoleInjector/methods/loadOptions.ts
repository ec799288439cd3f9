import type { ILoadOptionsFunctions, INodePropertyOptions } from 'n8n-workflow';
import { NodeOperationError } from 'n8n-workflow';
import { workerRequest } from '../transport';

type Variable = { name: string; required?: boolean; default?: string | null; description?: string | null };

/** The chosen role's declared variables (GET /v1/roles/<name>), required ones marked, for the name
 * of a variable under Options → Variables. */
export async function roleVariables(this: ILoadOptionsFunctions): Promise<INodePropertyOptions[]> {
	const role = String(this.getCurrentNodeParameter('role', { extractValue: true }) ?? '').trim();
	if (!role || role.startsWith('=')) {
		throw new NodeOperationError(
			this.getNode(),
			'Choose a role first: its variables are listed here',
			{
				description:
					'With an expression as the role, type the variable name as an expression too, or use Variables (JSON).',
			},
		);
	}
	const answer = await workerRequest.call(this, 'GET', `/v1/roles/${encodeURIComponent(role)}`);
	const variables = (Array.isArray(answer.variables) ? answer.variables : []) as Variable[];
	return variables.map((variable) => ({
		name: variable.required ? `${variable.name} (required)` : variable.name,
		value: variable.name,
		description: [
			variable.required
				? 'Required: the role fails without it.'
				: `Default: ${variable.default ? `"${variable.default}"` : 'empty'}.`,
			variable.description ?? '',
		]
			.join(' ')
			.trim(),
	}));
}
