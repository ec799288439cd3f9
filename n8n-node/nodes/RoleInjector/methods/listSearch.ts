import type {
	ILoadOptionsFunctions,
	INodeListSearchItems,
	INodeListSearchResult,
} from 'n8n-workflow';
import { workerRequest } from '../transport';

type RoleSummary = { name: string; description?: string; tokens?: number };

/** Roles of GET /v1/roles whose name or description contains the search text. */
export async function searchRoles(
	this: ILoadOptionsFunctions,
	filter?: string,
): Promise<INodeListSearchResult> {
	const answer = await workerRequest.call(this, 'GET', '/v1/roles');
	const roles = (Array.isArray(answer.roles) ? answer.roles : []) as RoleSummary[];
	const needle = (filter ?? '').trim().toLowerCase();

	const results: INodeListSearchItems[] = roles
		.filter(
			(role) =>
				!needle ||
				role.name.toLowerCase().includes(needle) ||
				(role.description ?? '').toLowerCase().includes(needle),
		)
		.map((role) => ({ name: label(role), value: role.name }));
	return { results };
}

// n8n's list shows only an entry's name, so the description and size go into it.
function label(role: RoleSummary): string {
	const parts = [role.name];
	if (role.description) parts.push(`— ${role.description}`);
	if (typeof role.tokens === 'number') parts.push(`(${role.tokens} tokens)`);
	return parts.join(' ');
}
